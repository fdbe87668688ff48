"""`latentdefence keygen`, `sign` and `verify`: thin commands over `latentdefence.signing`."""

from __future__ import annotations

from pathlib import Path

import typer

from .errors import cli_errors


def register(app: typer.Typer) -> None:
    """Add `keygen`, `sign` and `verify` to the main app."""
    app.command("keygen")(keygen)
    app.command("sign")(sign)
    app.command("verify")(verify)


def keygen(stem: Path = typer.Argument(..., help="Writes STEM.key (private, mode 600) and STEM.pub.")) -> None:
    """Create an Ed25519 key pair for signing artifacts."""
    with cli_errors():
        from ..signing import generate_keys

        private, public = generate_keys(stem)
        typer.echo(f"wrote {private} (keep it secret) and {public}")


def sign(artifact: Path = typer.Argument(..., help="Artifact file to sign."),
         key: Path = typer.Option(..., help="Ed25519 private key (PEM, from `latentdefence keygen`).")) -> None:
    """Sign an artifact: writes ARTIFACT.sig beside it (`serve --require-signature` checks it)."""
    with cli_errors():
        from ..signing import sign_artifact

        typer.echo(f"wrote {sign_artifact(artifact, key)}")


def verify(artifact: Path = typer.Argument(..., help="Artifact file to check."),
           key: Path = typer.Option(..., help="Ed25519 public key (PEM).")) -> None:
    """Check that ARTIFACT.sig is a valid signature of the artifact by KEY (exit 2 if not)."""
    with cli_errors():
        from ..signing import verify_artifact

        typer.echo(f"{artifact}: signed by {key} (sha256 {verify_artifact(artifact, key)})")
