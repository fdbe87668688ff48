"""The `latentdefence` command: a thin typer app over the library (see `latentdefence --help`)."""

from __future__ import annotations

import typer

from . import data, train

app = typer.Typer(help="Latent-space defences for image classifiers (DLD, LAD): train, attack, defend, measure.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
app.add_typer(data.app, name="data")
train.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
