"""Stage caching: an artifact directory keyed by the settings that produced it.

A second run, or a second experiment sharing a stage with the same settings, finds the
directory marked complete and skips the work; an interrupted stage has no marker and reruns.
Two processes that need the same unfinished stage at once take turns: the second waits on
the stage's lock file and then reuses what the first built (POSIX; elsewhere there is no lock).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from .._io import write_json

try:
    import fcntl
except ImportError:  # not POSIX: stages are not locked
    fcntl = None  # type: ignore[assignment]  # a module or None: mypy cannot type an optional import

_MARKER = "COMPLETE.json"
log = logging.getLogger(__name__)


def settings_key(settings: Mapping[str, Any] | Any) -> str:
    """Short stable hash of a settings mapping or dataclass."""
    if is_dataclass(settings) and not isinstance(settings, type):
        settings = asdict(settings)
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_root() -> Path:
    """$LATENTDEFENCE_RUNS or ./runs/cache."""
    return Path(os.environ.get("LATENTDEFENCE_RUNS", "runs")) / "cache"


def stage_dir(stage: str, settings: Mapping[str, Any] | Any, root: Path | None = None) -> Path:
    """The directory for `stage` with these settings (created if missing)."""
    path = (root or default_cache_root()) / f"{stage}-{settings_key(settings)}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_complete(path: Path) -> bool:
    """True when the stage in `path` finished and recorded its marker."""
    return (path / _MARKER).is_file()


def mark_complete(path: Path, info: Mapping[str, Any] | None = None) -> None:
    """Record that the stage in `path` finished (after all its files were written atomically)."""
    write_json(path / _MARKER, dict(info or {}))


@contextmanager
def _stage_lock(path: Path) -> Iterator[None]:
    """Hold the stage's lock file, so only one process builds a stage at a time."""
    with open(path / ".lock", "a") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_stage(stage: str, settings: Mapping[str, Any], build: Callable[[Path], object],
                 root: Path | None = None) -> Path:
    """The stage's directory, running `build(dir)` first unless a completed run with these settings exists
    (waiting for another process that is building it). The marker records how long the build took, so a run
    that reuses the stage can still report it."""
    path = stage_dir(stage, settings, root)
    if not is_complete(path):
        with _stage_lock(path):
            if not is_complete(path):  # not finished by a process we waited for
                start = time.perf_counter()
                build(path)
                mark_complete(path, {"stage": stage, "settings": settings,
                                     "build_seconds": round(time.perf_counter() - start, 1)})
                return path
    log.info("stage %s: reusing %s (built in %s s)", stage, path, build_seconds(path))
    return path


def any_complete_stage(root: Path | None = None) -> bool:
    """True when the cache already holds a finished stage, so a run starting now is not one from scratch."""
    root = root or default_cache_root()
    return root.is_dir() and any(is_complete(path) for path in root.iterdir() if path.is_dir())


def run_wall_time(started: float, from_scratch: bool) -> dict[str, Any]:
    """The whole run's wall time since `started` (perf_counter), and the same figure as
    `fresh_clone_wall_time_s` when every stage was built by this run (an empty cache at the start), else None."""
    total = round(time.perf_counter() - started, 1)
    return {"total_wall_time_s": total, "built_from_scratch": from_scratch,
            "fresh_clone_wall_time_s": total if from_scratch else None}


def build_seconds(path: Path) -> float | None:
    """Wall time the completed stage in `path` took to build (None for markers that predate it)."""
    value = json.loads((path / _MARKER).read_text()).get("build_seconds")
    return float(value) if value is not None else None
