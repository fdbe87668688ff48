"""Which natural-image classifier and adversarial-training recipe fit a CPU: a measured table, one row per recipe.

Each row trains F from scratch on the first `n_train` training images (same seed, same images, same epochs) and is
judged on `n_eval` held-out training images (never the test split, which the DLD runs evaluate on): clean accuracy
and PGD-`eval_steps` accuracy at the training radius, each with its Wilson 95% interval, plus wall time and images
per second. `reproduce cifar10-recipes --profile cpu` writes `docs/results/archive/cifar10-recipes`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_path, environment_info, git_revision, read_json, save_figure, write_json
from ..attacks import PGD
from ..data import load_dataset
from ..evaluation.metrics import accuracy, robust_accuracy
from ..stats import wilson_interval
from ..models import create_model
from ..training import TrainConfig, load_checkpoint, train_classifier
from .cache import ensure_stage, settings_key
from .registry import choose_profile, register_pipeline

EPS = 8 / 255


@dataclass(frozen=True)
class Recipe:
    """One row: an architecture (registry name and width) and its training settings."""

    name: str
    arch: str
    width: float
    train: TrainConfig


def _fgsm_rs(**kw: Any) -> TrainConfig:
    return TrainConfig(adversarial="fgsm_rs", eps=EPS, steps=1, batch_size=128, epochs=4, **kw)


SGD_ONECYCLE: dict[str, Any] = {"optimizer": "sgd", "lr": 0.2, "schedule": "onecycle", "weight_decay": 5e-4}
RECIPES: tuple[Recipe, ...] = (
    Recipe("8-layer conv (paper's SVHN net), Adam 1e-3, FGSM-RS, no augmentation", "dld_svhn", 0.5,
           _fgsm_rs(lr=1e-3)),
    Recipe("8-layer conv, Adam one-cycle 3e-3, FGSM-RS, crop+flip", "dld_svhn", 0.5,
           _fgsm_rs(lr=3e-3, schedule="onecycle", augment="crop_flip")),
    Recipe("PreAct ResNet-18, SGD one-cycle 0.2, FGSM-RS, crop+flip", "preact_resnet18", 0.25,
           _fgsm_rs(augment="crop_flip", **SGD_ONECYCLE)),
    Recipe("PreAct ResNet-18, SGD one-cycle 0.2, PGD-2, crop+flip", "preact_resnet18", 0.25,
           replace(_fgsm_rs(augment="crop_flip", **SGD_ONECYCLE), adversarial="pgd", steps=2, step_size=EPS / 2)),
)


@dataclass(frozen=True)
class RecipeConfig:
    """The screening: every recipe at the same data, epochs and evaluation."""

    profile: str = "cpu"
    dataset: str = "cifar10"
    data_dir: str | None = None
    epochs: int = 4                  # every row's (its TrainConfig says the same: `recipes_config`)
    n_train: int = 20_000
    n_eval: int = 1000               # the last n_eval training images, held out from every row's training
    eval_steps: int = 20
    recipes: tuple[Recipe, ...] = field(default=RECIPES)
    seed: int = 0


def recipes_config(profile: str, dataset: str, data_dir: str | None, checkpoint: str | None) -> RecipeConfig:
    """cpu: 4 epochs on 20k images (a screening, ~40 min of one core); smoke: seconds."""
    if checkpoint is not None:
        raise ValueError("the recipe screening trains its own classifiers; it takes no --classifier")
    return choose_profile(profile, {
        "smoke": lambda: RecipeConfig(profile, dataset, data_dir, epochs=1, n_train=256, n_eval=64, eval_steps=2,
                                      recipes=tuple(replace(r, width=0.125 if r.arch == "preact_resnet18" else 0.25,
                                                            train=replace(r.train, epochs=1)) for r in RECIPES)),
        "cpu": lambda: RecipeConfig(profile, dataset, data_dir),
        "paper": lambda: RecipeConfig(profile, dataset, data_dir)}, "cifar10-recipes")


def run_recipes(config: RecipeConfig, out_dir: str | Path) -> dict[str, Any]:
    """Train and judge every recipe; results.json, report.md and a clean-vs-robust figure in `out_dir`."""
    out, revision = Path(out_dir), git_revision()
    splits = load_dataset(config.dataset, Path(config.data_dir) if config.data_dir else None)
    train = splits.train.head(config.n_train)
    held_out = splits.train.subset(slice(len(splits.train) - config.n_eval, len(splits.train)))
    if config.n_train + config.n_eval > len(splits.train):
        raise ValueError(f"n_train {config.n_train} + n_eval {config.n_eval} exceed the {len(splits.train)} "
                         "training images")
    rows = [_row(config, recipe, train, held_out) for recipe in config.recipes]
    results = {"rows": rows, "settings": asdict(config), "seed": config.seed, "git_revision": revision,
               "environment": environment_info(), "data": splits.provenance}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    _figure(out, rows)
    _report(out / "report.md", config, results)
    return results


def _row(config: RecipeConfig, recipe: Recipe, train: Any, held_out: Any) -> dict[str, Any]:
    cfg = replace(recipe.train, epochs=config.epochs, seed=config.seed)
    settings = {"dataset": config.dataset, "arch": recipe.arch, "width": recipe.width, "n_train": len(train),
                "train": cfg.key_settings()}
    path = ensure_stage("classifier-recipe", settings, lambda d: train_classifier(
        create_model(recipe.arch, width=recipe.width), train, cfg, checkpoint_dir=d))
    model, meta = load_checkpoint(path / "final")
    model.eval()
    train_s = sum(float(epoch["seconds"]) for epoch in meta["history"])   # per epoch, so a resumed run counts whole
    key = settings_key({"n": len(held_out), "steps": config.eval_steps, "seed": config.seed, "start": "seeded"})
    judged = path / f"eval-{key}.json"
    if not judged.is_file():   # the judgement is kept beside the weights: a report re-made later costs nothing
        x, y = held_out.images, held_out.labels
        attack = PGD(EPS, 2.5 * EPS / config.eval_steps, config.eval_steps,
                     generator=torch.Generator().manual_seed(config.seed))   # the same random start every time
        write_json(judged, {"clean": accuracy(model, x, y), "pgd": robust_accuracy(model, x, y, attack)})
    clean, pgd = (float(read_json(judged)[k]) for k in ("clean", "pgd"))
    n = len(held_out)
    clean_ci = wilson_interval(round(clean * n), n)
    return {"name": recipe.name, "arch": recipe.arch, "width": recipe.width,
            "weights": sum(p.numel() for p in model.parameters()), "train": asdict(cfg),
            "clean_accuracy": clean, "clean_ci": clean_ci,
            "pgd_accuracy": pgd, "pgd_ci": wilson_interval(round(pgd * n), n), "n_eval": n,
            "trained": clean_ci[0] > 1 / model.num_classes + 0.05,   # above chance, or the row is not used
            "train_seconds": train_s, "images_per_second": config.epochs * len(train) / train_s,
            "stage": path.name, "key": settings_key(settings)}


def _figure(out: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, r in enumerate(rows):
        (clo, chi), (plo, phi) = r["clean_ci"], r["pgd_ci"]
        ax.errorbar(100 * r["clean_accuracy"], 100 * r["pgd_accuracy"],
                    xerr=[[100 * (r["clean_accuracy"] - clo)], [100 * (chi - r["clean_accuracy"])]],
                    yerr=[[100 * (r["pgd_accuracy"] - plo)], [100 * (phi - r["pgd_accuracy"])]], fmt="o",
                    label=f"{i + 1}: {r['name']}, width {r['width']:g} ({r['train_seconds'] / 60:.0f} min)")
    ax.set(xlabel="clean accuracy (%)", ylabel="PGD accuracy at eps 8/255 (%)",
           title="CIFAR-10 (JPEG copy): recipe screening")
    ax.legend(fontsize=6, loc="lower right")
    save_figure(fig, out / "recipes.png", tight_layout=True)


def _report(path: Path, config: RecipeConfig, results: dict[str, Any]) -> None:
    note = results["data"].get("note", "")
    lines = [f"# Classifier recipes on {config.dataset} ({config.profile} profile)", "",
             f"{note}." if note else "", "",
             f"Every row: {config.epochs} epochs on the first {config.n_train} training images, seed {config.seed}, "
             f"eps 8/255; judged on the last {config.n_eval} training images (held out, not the test split): clean "
             f"and PGD-{config.eval_steps} (step 2.5 eps / {config.eval_steps}, no restart) accuracy with Wilson 95% "
             f"intervals. Train time: the sum of the epochs' times on {results['environment']['torch_threads']} torch "
             f"thread(s) of this 2-core machine, which other jobs shared (compare rows by their accuracy; "
             f"`benchmarks/train.py` times a model alone). git {results['git_revision']}.", "",
             "A row whose clean accuracy is not clearly above chance (its interval's lower end within 5 points of 1/K) "
             "did not train: it is marked and not used.", "",
             f"| # | recipe | model (width) | weights | clean [95% CI] | PGD-{config.eval_steps} [95% CI] | train time | "
             "images/s |", "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(results["rows"], 1):
        (clo, chi), (plo, phi) = r["clean_ci"], r["pgd_ci"]
        mark = "" if r["trained"] else " **(did not train: not used)**"
        lines.append(f"| {i} | {r['name']}{mark} | {r['arch']} ({r['width']:g}) | {r['weights'] / 1e6:.2f}M | {100 * r['clean_accuracy']:.1f} "
                     f"[{100 * clo:.1f}, {100 * chi:.1f}] | {100 * r['pgd_accuracy']:.1f} [{100 * plo:.1f}, "
                     f"{100 * phi:.1f}] | {r['train_seconds']:.0f} s | {r['images_per_second']:.0f} |")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


register_pipeline("classifier-recipes", config=recipes_config, run=run_recipes)
