"""`latentdefence attack run|show`: attack a checkpoint on a dataset split and save the adversarial set."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import typer

from ..validation import check_output
from .errors import cli_errors

app = typer.Typer(help="Run an attack on a trained checkpoint and save the adversarial set.", no_args_is_help=True)

def build_attack(name: str, *, eps: float, norm: str, steps: Optional[int], step_size: Optional[float],
                 restarts: int, targeted: bool, early_stop: bool, confidence: float, initial_const: float,
                 search_steps: int, lr: float, theta: float, gamma: float, seed: int,
                 channels_last: bool, n_target_classes: Optional[int] = None,
                 queries: Optional[int] = None) -> Any:
    """The attack object a command line describes (threat-model flags only; no maths here)."""
    import torch

    from .. import attacks as A

    if name not in A.list_attacks("model"):      # the registry decides: a newly registered attack is offered here too
        raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(A.list_attacks('model'))} "
                         "(latentdefence attack list)")
    if name == "jsma" and not targeted:
        raise ValueError("jsma is a targeted attack: pass --targeted (targets = (label + --target-shift) mod K)")
    if name == "apgdt" and targeted:
        raise ValueError("apgdt picks its own targets and reports untargeted success: drop --targeted")
    flags = {"eps": eps, "norm": norm, "steps": steps, "step_size": step_size, "restarts": restarts,
             "targeted": targeted, "early_stop": early_stop, "confidence": confidence, "initial_const": initial_const,
             "binary_search_steps": search_steps, "lr": lr, "theta": theta, "gamma": gamma,
             "generator": torch.Generator().manual_seed(seed), "channels_last": channels_last,
             "n_target_classes": n_target_classes, "square_queries": queries, "queries": queries}
    takes = A.attack_entry(name).parameters()
    return A.create_attack(name, **{k: v for k, v in flags.items() if k in takes and v is not None})


@app.command("list")
def list_() -> None:
    """The registered attacks: those `attack run` takes (on F), then those on F and a detector (evaluate-detector)."""
    from .. import attacks as A

    for on, title in (("model", "on F (attack run --attack NAME)"), ("detector", "on F and a detector")):
        typer.echo(f"{title}:")
        for name in A.list_attacks(on):
            doc = (A.attack_entry(name).factory.__doc__ or "").strip().splitlines()
            typer.echo(f"  {name:16s} {doc[0] if doc else ''}")


@app.command("run")
def run(
    checkpoint: Path = typer.Argument(..., help="Checkpoint written by `latentdefence train` (with or without .safetensors)."),
    attack: str = typer.Option("pgd", help="A registered attack on F (`latentdefence attack list`), e.g. fgsm, pgd, "
                               "cw, autoattack (APGD-CE, APGD-T, Square on what stays robust)."),
    out: Path = typer.Option(..., help="Where to write the adversarial set (.safetensors)."),
    dataset: str = typer.Option("mnist", help="mnist (embedded) | mnist-idx | svhn | cifar10 | folder | celeba-smile"),
    data_dir: Optional[Path] = typer.Option(None, help="Folder with the dataset's files (not for embedded mnist)."),
    split: str = typer.Option("test", help="test | train"),
    limit: int = typer.Option(1000, help="Attack the first N images of the split."),
    batch_size: int = typer.Option(256, help="Images per attack call."),
    eps: float = typer.Option(0.3, help="Radius (L-inf per pixel or L2) for fgsm/pgd/apgd*."),
    norm: str = typer.Option("linf", help="linf | l2 (pgd, apgd*)."),
    steps: Optional[int] = typer.Option(None, help="Iterations (default: pgd 40, apgd 100, cw 1000)."),
    step_size: Optional[float] = typer.Option(None, help="PGD step (default 2.5 eps / steps)."),
    restarts: int = typer.Option(1, help="Random restarts (pgd, apgd*)."),
    targeted: bool = typer.Option(False, help="Targeted attack toward (label + --target-shift) mod K."),
    target_shift: int = typer.Option(1, help="Target = (label + shift) mod K when --targeted."),
    early_stop: bool = typer.Option(False, help="PGD: stop each sample at its first success."),
    confidence: float = typer.Option(0.0, help="CW kappa."),
    initial_const: float = typer.Option(1e-3, help="CW initial c."),
    search_steps: int = typer.Option(9, help="CW binary-search steps over c."),
    lr: float = typer.Option(1e-2, help="CW Adam learning rate."),
    n_target_classes: Optional[int] = typer.Option(None, help="apgdt / autoattack: target classes (default 9)."),
    queries: Optional[int] = typer.Option(None, help="square / autoattack: Square's queries (default 5000)."),
    theta: float = typer.Option(1.0, help="JSMA change per feature."),
    gamma: float = typer.Option(0.1, help="JSMA max fraction of features changed."),
    channels_last: bool = typer.Option(False, help="Run conv weights channels_last (faster for dld_* on CPU)."),
    uint8: bool = typer.Option(False, help="Store images as uint8 (4x smaller)."),
    seed: int = 0,
) -> None:
    """Attack the first LIMIT images of a split; print success rate, robust accuracy, mean norm; save the set."""
    with cli_errors():
        check_output(out, "file", [checkpoint])
        import torch

        from .._io import sha256_file
        from ..attacks import save_adversarial_set
        from ..data import load_dataset
        from ..training import load_checkpoint
        from ..validation import check_count

        if split not in ("test", "train"):
            raise ValueError(f"--split must be 'test' or 'train', got {split!r}")
        check_count("--limit", limit)
        check_count("--batch-size", batch_size)
        weights = checkpoint if checkpoint.suffix == ".safetensors" else checkpoint.with_suffix(".safetensors")
        if not weights.is_file():
            raise FileNotFoundError(f"{weights}: no such checkpoint")
        adversary = build_attack(attack, eps=eps, norm=norm, steps=steps, step_size=step_size, restarts=restarts,
                                 targeted=targeted, early_stop=early_stop, confidence=confidence,
                                 initial_const=initial_const, search_steps=search_steps, lr=lr, theta=theta,
                                 gamma=gamma, seed=seed, channels_last=channels_last,
                                 n_target_classes=n_target_classes, queries=queries)
        model, meta = load_checkpoint(weights)
        data = getattr(load_dataset(dataset, data_dir), split)
        images, labels = data.images[:limit], data.labels[:limit]
        classes = int(getattr(model, "num_classes", 0) or int(labels.max()) + 1)
        targets = (labels + target_shift) % classes if targeted else None
        if targets is not None and (targets == labels).any():
            raise ValueError(f"--target-shift {target_shift} maps some labels onto themselves (K = {classes})")
        from ..attacks.base import attack_in_batches
        from ..evaluation.metrics import batched_predict

        torch.manual_seed(seed)
        start = time.perf_counter()
        result = attack_in_batches(model, adversary, images, labels, targets, batch_size)
        seconds = time.perf_counter() - start
        clean_ok = batched_predict(model, images, batch_size) == labels
        summary = {
            "attack": adversary.describe(), "images": len(images),
            "clean_accuracy": clean_ok.float().mean().item(),
            "success_rate": result.success_rate,
            "robust_accuracy": (result.predictions == labels).float().mean().item(),
            "mean_norm_successful": (result.norms[result.success].mean().item() if result.success.any() else None),
            "seconds": round(seconds, 2),
        }
        save_adversarial_set(out, result, labels, attack=adversary, targets=targets,
                             source_indices=torch.arange(len(images)), model_name=meta.get("arch"),
                             checkpoint_sha256=sha256_file(weights), dataset=f"{dataset}:{split}", uint8=uint8,
                             extra={"summary": summary})
        typer.echo(json.dumps({**summary, "saved": str(out)}, indent=2))


@app.command("show")
def show(path: Path = typer.Argument(..., help="An adversarial set written by `attack run`.")) -> None:
    """Print an adversarial set's metadata and size."""
    with cli_errors():
        from ..attacks import load_adversarial_set

        adv = load_adversarial_set(path)
        typer.echo(json.dumps({"count": len(adv), "success_rate": adv.success.float().mean().item(),
                               **adv.metadata}, indent=2, default=str))
