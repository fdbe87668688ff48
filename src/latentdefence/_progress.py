"""Progress bars with an ETA for long work, quiet when output is not a terminal or when disabled."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator, Sized
from typing import TypeVar

from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

T = TypeVar("T")
log = logging.getLogger("latentdefence.progress")


def progress_enabled() -> bool:
    """Bars are drawn on a terminal unless LATENTDEFENCE_PROGRESS=0."""
    flag = os.environ.get("LATENTDEFENCE_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no")
    return sys.stderr.isatty()


def make_progress() -> Progress:
    """A rich Progress with count, elapsed time, ETA and a free-text status column."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"), disable=not progress_enabled(), transient=False)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar and ETA; `total` is needed for items without a len() (a generator)."""
    if total is None:
        if not isinstance(items, Sized):
            raise TypeError(f"track({description!r}): {type(items).__name__} has no len(); pass total=")
        total = len(items)
    with make_progress() as progress:
        task = progress.add_task(description, total=total, status="")
        for item in items:
            yield item
            progress.advance(task)


def advance(progress: Progress, task: TaskID, status: str) -> None:
    """Advance a bar one step and log every tenth of it, so runs off a terminal still show progress."""
    progress.update(task, advance=1, status=status)
    info = next(t for t in progress.tasks if t.id == task)
    done, total = int(info.completed), info.total
    if total is None or total <= 10 or done == total or done % (int(total) // 10) == 0:
        log.info("%s %d/%s: %s", info.description, done, total, status)
