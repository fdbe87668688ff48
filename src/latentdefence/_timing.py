"""Wall time per named stage, logged as each stage starts and ends: shared by the experiments and the evaluation."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("latentdefence.stages")


class StageTimer:
    """Wall time per stage, for results.json (a stage timed twice accumulates), logged as each stage ends."""

    def __init__(self) -> None:
        self.wall_time_s: dict[str, float] = {}

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the block's wall time to stage `name`."""
        start = time.perf_counter()
        log.info("stage %s: started", name)
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.wall_time_s[name] = round(self.wall_time_s.get(name, 0.0) + elapsed, 2)
            log.info("stage %s: finished in %.1f s", name, elapsed)
