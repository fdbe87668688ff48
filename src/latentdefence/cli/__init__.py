"""The `latentdefence` command: a thin typer app over the library (see `latentdefence --help`)."""

from __future__ import annotations

import logging

import typer

from .._progress import log_handler
from . import attack, audit, data, dld, evaluate_detector, lad, reproduce, serve, sign, train

app = typer.Typer(help="Latent-space defences for image classifiers (DLD, LAD): train, attack, defend, measure.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
app.add_typer(data.app, name="data")
app.add_typer(attack.app, name="attack")
app.add_typer(dld.app, name="dld")
app.add_typer(lad.app, name="lad")
app.add_typer(audit.app, name="audit")
train.register(app)
reproduce.register(app)
evaluate_detector.register(app)
serve.register(app)
sign.register(app)


@app.callback()
def _configure(verbose: bool = typer.Option(True, help="Log per-epoch and per-stage summaries to stderr.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[log_handler()])


@app.command("models")
def models() -> None:
    """List the registered architectures and their taps."""
    from ..models import create_model, list_models

    for name in list_models():
        model = create_model(name, **({"image_size": 64} if name == "celeba_net" else {}))
        params = sum(p.numel() for p in model.parameters())
        typer.echo(f"{name:12s} {params / 1e6:6.2f}M params  input {model.input_shape}  taps {', '.join(model.tap_names)}")


def main() -> None:
    """Console-script entry point."""
    app()
