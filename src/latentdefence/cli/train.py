"""`latentdefence train` and `latentdefence evaluate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, cast

import typer

from ..validation import check_output
from .errors import cli_errors


def register(app: typer.Typer) -> None:
    """Add the training and evaluation commands to the main app."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)


def train(
    arch: str = typer.Option("dld_mnist", help="Registered architecture (see `latentdefence models`)."),
    width: Optional[float] = typer.Option(None, help="The architecture's width multiplier (e.g. preact_resnet18 "
                                          "0.25); default: its own."),
    dataset: str = typer.Option("mnist", help="mnist (embedded) | mnist-idx | svhn | cifar10 | folder | celeba-smile"),
    data_dir: Optional[Path] = typer.Option(None, help="Folder with the dataset's files (not for embedded mnist)."),
    out: Path = typer.Option(Path("runs/train"), help="Checkpoint folder: last.* (resumable) and final.*"),
    epochs: int = 10, batch_size: int = 100, lr: float = 1e-3,
    optimizer: str = typer.Option("adam", help="adam | sgd"),
    schedule: str = typer.Option("constant", help="constant | onecycle | cosine | tail (constant, cosine at the end)"),
    tail_epochs: float = typer.Option(2.0, help="Tail schedule: epochs at the end over which the lr decays to 0."),
    adversarial: str = typer.Option("none", help="none | pgd (Madry) | fgsm_rs (fast, guarded) | trades"),
    eps: float = 0.3, steps: int = 7, eps_ramp_epochs: float = 0.0,
    trades_beta: float = typer.Option(1.0, help="TRADES: weight of the KL term (with --adversarial trades)."),
    weight_decay: float = 0.0,
    augment: str = typer.Option("none", help="none | crop_flip (CIFAR's random 4-pixel shift and mirror)"),
    val_size: int = typer.Option(5000, help="Training images held out for periodic evaluation."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N training images (quick runs)."),
    restart: bool = typer.Option(False, help="Train afresh over a checkpoint of another run in OUT (else refused)."),
    seed: int = 0,
) -> None:
    """Train a classifier (clean or adversarially), resumable from OUT/last, saving OUT/final."""
    with cli_errors():
        check_output(out, "folder")
        from .._seed import seed_everything
        from ..data import load_dataset
        from ..models import create_model
        from ..training import TrainConfig, train_classifier
        from ..training.augment import Augment
        from ..training.loop import Adversarial, Optimizer, Schedule

        seed_everything(seed)  # the initial weights depend on it too
        splits = load_dataset(dataset, data_dir)
        train_set = splits.train.head(limit)
        if not 0 <= val_size < len(train_set):
            raise ValueError(f"--val-size {val_size} must be smaller than the {len(train_set)} training images")
        fit, val = train_set.subset(slice(0, len(train_set) - val_size)), train_set.subset(
            slice(len(train_set) - val_size, None))
        config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=cast(Optimizer, optimizer),
                             schedule=cast(Schedule, schedule), adversarial=cast(Adversarial, adversarial),
                             eps=eps, steps=steps,  # the casts: TrainConfig checks each choice at run time
                             eps_ramp_epochs=eps_ramp_epochs, trades_beta=trades_beta, tail_epochs=tail_epochs,
                             weight_decay=weight_decay, augment=cast(Augment, augment), seed=seed)
        result = train_classifier(create_model(arch, **({} if width is None else {"width": width})), fit, config, val=val if val_size else None,
                                  checkpoint_dir=out, metadata={"val_size": val_size}, restart=restart)
        typer.echo(json.dumps({"checkpoint": str(result.checkpoint), "last_epoch": result.history[-1]}, indent=2))


def evaluate(
    checkpoints: list[Path] = typer.Argument(..., help="Checkpoint paths (without or with .safetensors); "
                                             "several: compared on the same images, paired against the first."),
    dataset: str = "mnist", data_dir: Optional[Path] = None,
    eps: float = 0.3, steps: int = 40, step_size: Optional[float] = None, restarts: int = 1,
    limit: Optional[int] = typer.Option(None, help="Evaluate on the first N test images only."),
    seed: int = typer.Option(0, help="Seed of PGD's random start (the same for every checkpoint)."),
    out: Optional[Path] = typer.Option(None, help="Also write results.json and report.md into this folder."),
) -> None:
    """Clean and PGD (L-inf) accuracy of checkpoints on the test split, each against the first (McNemar)."""
    with cli_errors():
        if out is not None:
            check_output(out / "results.json", "file", checkpoints)
        import torch

        from ..attacks import PGD
        from ..attacks.base import madry_step_size
        from ..data import load_dataset
        from ..evaluation.classifiers import compare_classifiers, write_classifier_comparison
        from ..training import load_checkpoint
        from ..validation import check_count

        if limit is not None:
            check_count("--limit", limit)
        check_count("--steps", steps)
        check_count("--restarts", restarts)

        def attack() -> PGD:
            return PGD(eps, step_size, steps, restarts=restarts, generator=torch.Generator().manual_seed(seed))
        models = {str(c): load_checkpoint(c)[0] for c in checkpoints}
        test = load_dataset(dataset, data_dir).test.head(limit)
        comparison = compare_classifiers(models, test.images, test.labels, attack)
        settings = {"dataset": dataset, "eps": eps, "steps": steps,
                    "step_size": madry_step_size(eps, steps, step_size),
                    "restarts": restarts, "seed": seed, "images": f"first {len(test)} test images"}
        typer.echo(json.dumps({**comparison, "settings": settings}, indent=2))
        if out:
            write_classifier_comparison(comparison, settings, out)
