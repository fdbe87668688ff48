"""`latentdefence dld fit|calibrate|cite-training|detect|evaluate|compare`: thin commands over `latentdefence.dld`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..validation import check_output
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
        check_output(out, "file", [checkpoint])
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
        from ..data import calibration_split

        cal, _ = calibration_split(load_dataset(dataset, data_dir).test, n_calibration, seed)
        det = DeepLatentDefence.load(detector).calibrate(cal, target_fpr=target_fpr)
        det.save(detector)
        r = det.calibration_report()
        lo, hi = r["calibration_fpr_ci"]
        typer.echo(f"threshold {det.threshold_:g}: calibration FP {r['calibration_fpr']:.4f} [{lo:.4f}, {hi:.4f}] "
                   f"(Wilson 95%, n {r['n']}); a new clean input is flagged with probability <= "
                   f"{r['held_out_fpr_bound']:.4f} (conformal bound, target {r['target_fpr']:g})")


@app.command("cite-training")
def cite_training(detector: Path, out: Path = typer.Option(..., help="Detector artifact to write (not DETECTOR)."),
                  dataset: str = "mnist", data_dir: Optional[Path] = None,
                  max_train: Optional[int] = typer.Option(None, help="DETECTOR was fitted on the first N training "
                                                          "images (default: all).")) -> None:
    """Record which training image each indexed point is, for an artifact written before `fit` did (the review
    console shows a verdict's neighbours as images); the index is matched to the training set or refused."""
    with cli_errors():
        check_output(out, "file", [detector])
        from ..data import load_split
        from ..dld import DeepLatentDefence

        det = DeepLatentDefence.load(detector)
        train = load_split(dataset, "train", data_dir, det.classifier.input_shape[0])
        det.recover_citations(train.head(max_train))
        det.save(out)
        typer.echo(f"wrote {out}: each index cites its {det.evidence_source_['dataset']} "
                   f"{det.evidence_source_['split']} rows")


@app.command()
def detect(detector: Path, images: Path = typer.Argument(..., help="safetensors file with an `images` tensor (N,C,H,W)."),
           out: Optional[Path] = typer.Option(None, help="Write per-image results as JSON here.")) -> None:
    """Classify and flag each image; print how many were flagged."""
    with cli_errors():
        if out is not None:
            check_output(out, "file", [detector, images])
        from .._io import load_tensor, write_json
        from ..dld import DeepLatentDefence

        pixels = load_tensor(images, "images")
        result = DeepLatentDefence.load(detector).predict(pixels)
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
        check_output(out, "folder", [classifier_checkpoint])
        from dataclasses import replace

        from ..experiments.dld import dld_config, run_dld

        config = replace(dld_config(profile, dataset, data_dir), classifier_checkpoint=classifier_checkpoint)
        run_dld(config, out)
        typer.echo((out / "report.md").read_text())


@app.command()
def compare(detectors: list[str] = typer.Argument(..., help="NAME=PATH detector artifacts guarding one F; the first is the reference."),
            attack: str = typer.Option("fgsm", help="fgsm | pgd, against F alone (grey box), linf."),
            eps: float = 0.3, steps: int = 40, n: Optional[int] = typer.Option(None, help="Evaluation images (default: all)."),
            dataset: str = "mnist", data_dir: Optional[Path] = None, seed: int = 0,
            out: Path = typer.Option(Path("runs/dld-compare"), help="Folder for results.json and report.md.")) -> None:
    """ROC AUCs of several detectors on the same attacked test images, each against the first by DeLong's paired test."""
    with cli_errors():
        check_output(out / "results.json", "file", [d.split("=", 1)[-1] for d in detectors])
        import torch

        from ..attacks import create_attack
        from ..attacks.base import attack_in_batches
        from ..data import load_dataset
        from ..dld import DeepLatentDefence
        from ..evaluation.detector_comparison import compare_detectors, write_detector_comparison
        from ..data import calibration_split

        if attack not in ("fgsm", "pgd"):
            raise ValueError(f"attack must be fgsm or pgd, got {attack!r}")
        named = dict(_name_and_path(d) for d in detectors)
        loaded = {name: DeepLatentDefence.load(path) for name, path in named.items()}
        _, clean = calibration_split(load_dataset(dataset, data_dir).test, 750, seed)
        clean = clean.head(n) if n else clean
        settings: dict[str, object] = {"attack": attack, "eps": eps, "n": len(clean), "seed": seed, "dataset": dataset,
                                       "detectors": named, **({"steps": steps} if attack == "pgd" else {})}
        budget = {"eps": eps, **({"steps": steps, "generator": torch.Generator().manual_seed(seed)} if attack == "pgd" else {})}
        adversarial = attack_in_batches(next(iter(loaded.values())).classifier, create_attack(attack, **budget),
                                        clean.images, clean.labels, batch_size=500).images
        comparison = compare_detectors(loaded, clean.images, adversarial, clean.labels)
        typer.echo((write_detector_comparison(comparison, settings, out) / "report.md").read_text())


def _name_and_path(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"detectors are given as NAME=PATH, got {spec!r}")
    return name, path
