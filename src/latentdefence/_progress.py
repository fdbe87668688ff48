"""Progress bars with an ETA for long work on a terminal, plain log lines when output is piped or bars disabled.

One live display at a time: work nested inside other long work (an attack inside an evaluation) adds its bar to
the display already on screen, and log lines go through the same stderr console, so they print whole above it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from typing import TypeVar

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)

T = TypeVar("T")
log = logging.getLogger("latentdefence.progress")
_on_screen: ContextVar[Progress | None] = ContextVar("latentdefence_progress_on_screen", default=None)


def progress_enabled() -> bool:
    """Bars are drawn on a terminal unless LATENTDEFENCE_PROGRESS=0."""
    flag = os.environ.get("LATENTDEFENCE_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no")
    return sys.stderr.isatty()


@cache
def _stderr_console() -> Console:
    """The console bars and log lines share, so rich can keep the two apart."""
    return Console(stderr=True)


@contextmanager
def make_progress() -> Iterator[Progress]:
    """The Progress on screen (count, elapsed time, ETA and a free-text status column): a new one, or the one
    already live when this work runs inside other long work."""
    live = _on_screen.get()
    if live is not None:
        yield live
        return
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                        console=_stderr_console(), disable=not progress_enabled(), transient=False)
    token = _on_screen.set(progress)
    try:
        with progress:
            yield progress
    finally:
        _on_screen.reset(token)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar and ETA; `total` is needed for items without a len() (a generator)."""
    if total is None:
        if not isinstance(items, Sized):
            raise TypeError(f"track({description!r}): {type(items).__name__} has no len(); pass total=")
        total = len(items)
    with steps(description, total) as done:
        for item in items:
            yield item
            done("")


@contextmanager
def steps(description: str, total: int) -> Iterator[Callable[[str], None]]:
    """A bar over `total` steps of unequal work (an evaluation's attack stages); call the yielded function with a
    status after each step. Nested in other work, the bar leaves the screen when done."""
    nested = _on_screen.get() is not None
    with make_progress() as progress:
        task = progress.add_task(description, total=total, status="")
        progress.refresh()                  # drawn now, however short the work: not only at the next 10 Hz tick
        try:
            yield lambda status: advance(progress, task, status)
        finally:
            if nested:
                progress.remove_task(task)


def advance(progress: Progress, task: TaskID, status: str) -> None:
    """Advance a bar one step; off a terminal (no bar drawn), log every tenth of it instead."""
    progress.update(task, advance=1, status=status)
    if not progress.disable:
        progress.refresh()
        return
    info = next(t for t in progress.tasks if t.id == task)
    done, total = int(info.completed), info.total
    if total is None or total <= 10 or done == total or done % (int(total) // 10) == 0:
        log.info("%s %d/%s: %s", info.description, done, total, status)


def log_handler() -> logging.Handler:
    """Log lines printed above the live bars on a terminal, plain timestamped lines when piped."""
    if progress_enabled():
        handler: logging.Handler = RichHandler(console=_stderr_console(), show_path=False, log_time_format="%H:%M:%S")
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        return handler
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    return handler
