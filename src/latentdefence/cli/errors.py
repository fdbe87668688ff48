"""One place that turns library errors into a clear message and exit code 2."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer


@contextlib.contextmanager
def cli_errors() -> Iterator[None]:
    """Print `error: <message>` on stderr and exit 2 for the errors a user can fix."""
    try:
        yield
    except (ValueError, TypeError, KeyError, OSError) as err:   # OSError: unwritable, full disk, missing file...
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from err
