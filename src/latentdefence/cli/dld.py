"""`latentdefence dld fit|calibrate|detect|evaluate`: thin commands over `latentdefence.dld`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .errors import cli_errors

app = typer.Typer(help="Deep Latent Defence: fit encoders + latent k-NN, calibrate, detect, reproduce Tables I-II.",
                  no_args_is_help=True)


@app.command()
def fit(checkpoint: Path = typer.Argument(..., help="Classifier checkpoint (from `latentdefence train`)."),
        out: Path = typer.Option(Path("runs/dld/detector.safetensors"), help="Detector artifact to write."),
        dataset: str = "mnist", data_dir: Optional[Path] = None,
        taps: str = typer.Option("layer1,layer2,layer3", help="Comma-separated layers given an encoder."),
        latent_dim: int = 10, k: int = 10, epochs: int = 10, pgd_steps: int = 40, eps: float = 0.3,
        max_train: Optional[int] = typer.Option(None, help="Train encoders on the first N images only.")) -> None:
    """Train one adversarial encoder-decoder per tap and index the pruned training embeddings."""
    with cli_errors():
        from ..data import load_dataset
        from ..dld import DeepLatentDefence, EncoderTrainConfig
        from ..training import load_checkpoint

        cfg = EncoderTrainConfig(epochs=epochs, steps=pgd_steps, eps=eps, max_train=max_train)
        det = DeepLatentDefence(load_checkpoint(checkpoint)[0], taps.split(","), k=k, latent_dim=latent_dim, training=cfg)
        det.fit(load_dataset(dataset, data_dir).train).save(
            out, metadata={"dataset": dataset, "threat_model": {"norm": "linf", "eps": eps}})
        typer.echo(f"wrote {out} (pruned per layer: {det.pruned_})")


@app.command()
def calibrate(detector: Path, dataset: str = "mnist", data_dir: Optional[Path] = None,
              target_fpr: float = 0.02, n_calibration: int = 750, seed: int = 0) -> None:
    """Set the threshold on a seeded, held-out calibration slice of the test split (rewrites DETECTOR)."""
    with cli_errors():
        from ..data import load_dataset
        from ..dld import DeepLatentDefence
        from ..experiments.dld import calibration_split

        cal, _ = calibration_split(load_dataset(dataset, data_dir).test, n_calibration, seed)
        det = DeepLatentDefence.load(detector).calibrate(cal, target_fpr=target_fpr)
        det.save(detector)
        typer.echo(f"threshold {det.threshold_:g} (calibration FP {(det.calibration_scores_ > det.threshold_).float().mean():.4f})")


@app.command()
def detect(detector: Path, images: Path = typer.Argument(..., help="safetensors file with an `images` tensor (N,C,H,W)."),
           out: Optional[Path] = typer.Option(None, help="Write per-image results as JSON here.")) -> None:
    """Classify and flag each image; print how many were flagged."""
    with cli_errors():
        from .._io import load_tensors, write_json
        from ..dld import DeepLatentDefence

        result = DeepLatentDefence.load(detector).predict(load_tensors(images)[0]["images"])
        rows = {"predicted": result.predicted, "is_adversarial": result.is_adversarial,
                "credibility": result.credibility, "nonconformity": result.nonconformity}
        if out:
            write_json(out, rows)
        typer.echo(json.dumps({"n": len(result.predicted), "flagged": int(result.is_adversarial.sum())}))


@app.command()
def evaluate(profile: str = typer.Option("cpu", help="smoke | demo | cpu | paper"), dataset: str = "mnist",
             data_dir: Optional[str] = None, out: Path = Path("docs/results/dld-mnist-table1"),
             classifier_checkpoint: Optional[str] = typer.Option(None, help="Use this classifier instead of training one.")) -> None:
    """Reproduce Tables I-II and Fig. 3: results.json, report.md and figures in OUT."""
    with cli_errors():
        from dataclasses import replace

        from ..experiments.dld import dld_config, run_dld

        config = replace(dld_config(profile, dataset, data_dir), classifier_checkpoint=classifier_checkpoint)
        run_dld(config, out)
        typer.echo((out / "report.md").read_text())
