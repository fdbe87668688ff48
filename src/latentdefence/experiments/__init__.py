"""Every table and figure of both papers, by name: `run_experiment("dld-mnist-table1", "cpu", out)`
(`experiment_config` gives the settings it would run with).

Several names share one pipeline (Table II and Fig. 3 come from the same DLD run as Table I; LAD's
tables and figures from one LAD run per dataset); the stage cache makes the second name nearly free.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._io import staged_folder
from ..data.base import default_data_dir
from ..evaluation.workers import Workers
from ..validation import check_settings
from .overrides import apply_overrides
from .registry import Pipeline, get_pipeline, list_pipelines, register_pipeline

PROFILES = ("smoke", "demo", "cpu", "paper")


@dataclass(frozen=True)
class Experiment:
    """A named paper experiment: which pipeline, on which dataset, reproducing what."""

    name: str
    pipeline: str          # a registered pipeline: "dld", "dld-adaptive", "dld-ablation", "lad", "lad-ablation", ...
    dataset: str
    reproduces: str
    needs_data_dir: bool = False


def _experiments() -> dict[str, Experiment]:
    items: list[Experiment] = []
    for ds, needs in (("mnist", False), ("svhn", True), ("cifar10", True)):
        for what, text in (("table1", "DLD Table I (FGSM, PGD, CW, adaptive: base accuracy, robustness, ROC AUC)"),
                           ("table2", "DLD Table II (cumulative TP increase and FP by encoder depth)"),
                           ("fig3", "DLD Fig. 3 (robustness against the adaptive attack's alpha2)")):
            items.append(Experiment(f"dld-{ds}-{what}", "dld", ds, f"{text}, {ds.upper()}", needs))
    items.append(Experiment("dld-mnist-adaptive", "dld-adaptive", "mnist",
                            "DLD and Deep k-NN / Mahalanobis / LID under detector-aware attacks, F under AutoAttack"))
    items.append(Experiment("dld-cifar10-adaptive", "dld-adaptive", "cifar10",
                            "DLD and Deep k-NN / Mahalanobis / LID under detector-aware attacks, F under AutoAttack, "
                            "on CIFAR-10 (ours: the paper's SVHN recipe on natural images)", True))
    items.append(Experiment("dld-mnist-hardening", "dld-hardening", "mnist",
                            "DLD with encoders hardened on detector-aware attacks vs the cpu-profile DLD, and worst "
                            "case against the clean FP rate (ours, issue 24; not in the paper)"))
    items.append(Experiment("dld-mnist-ablation", "dld-ablation", "mnist",
                            "DLD detection gap, one row per encoder-training factor (ours; not in the paper)"))
    lad = {"mnist": [("table2", "LAD Table II (white-box attacks on LeNet vs Adv. LeNet)"),
                     ("table3", "LAD Table III (transfer attacks from a black CNN vs FT-0.1 LeNet)"),
                     ("table4", "LAD Table IV (clean accuracy after fine-tuning on each attack)"),
                     ("fig3", "LAD Fig. 3 (generator reconstructions)"),
                     ("fig4", "LAD Fig. 4 (FGSM / JSMA / LAD examples)"),
                     ("fig5", "LAD Fig. 5 (attack success rate against eps)"),
                     ("fig6", "LAD Fig. 6 (transitions across the boundary)"),
                     ("fig7", "LAD Fig. 7 (clean and adversarial accuracy against eps)")],
           "svhn": [("table5", "LAD Table V (white-box attacks on svhnNet)"),
                    ("table6", "LAD Table VI (transfer attacks on svhnNet)"),
                    ("table7", "LAD Table VII (clean accuracy after fine-tuning)")],
           "celeba": [("table8", "LAD Table VIII (white-box attacks on CelebANet)"),
                      ("table9", "LAD Table IX (transfer attacks on CelebANet)"),
                      ("table10", "LAD Table X (clean accuracy after fine-tuning)")]}
    for ds, rows in lad.items():
        for what, text in rows:
            items.append(Experiment(f"lad-{ds}-{what}", "lad", ds, text, ds != "mnist"))
    items.append(Experiment("lad-mnist-ablation", "lad-ablation", "mnist",
                            "LAD ablation (issue 13): one row per factor, FGSM/PGD, same-budget controls"))
    items.append(Experiment("lad-mnist-paper-numbers", "lad-paper-numbers", "mnist",
                            "What LAD Tables II/III measure (issue 21): drift ceiling, long budget, alpha 0, "
                            "LeNet variant, unclipped attacks"))
    items.append(Experiment("cifar10-recipes", "classifier-recipes", "cifar10",
                            "Natural-image classifier and adversarial-training recipes screened on a CPU (ours)", True))
    return {e.name: e for e in items}


EXPERIMENTS: dict[str, Experiment] = _experiments()


def get_experiment(name: str) -> Experiment:
    """The experiment called `name`, or a clear error listing the choices."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name]


def experiment_config(name: str, profile: str, data_dir: str | Path | None = None,
                      classifier_checkpoint: str | Path | None = None, overrides: Sequence[str] = ()) -> Any:
    """The settings `run_experiment` runs `name` with: the profile's config of its pipeline, with the
    classifier checkpoint and the "key=value" overrides applied and every setting checked (nothing is loaded or
    trained)."""
    exp = get_experiment(name)
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    if profile == "demo" and exp.pipeline != "dld":
        raise ValueError("the demo profile is the README's DLD main job; other experiments take smoke, cpu or paper")
    ckpt = str(classifier_checkpoint) if classifier_checkpoint else None
    config = get_pipeline(exp.pipeline).config(profile, exp.dataset, str(data_dir) if data_dir else None, ckpt)
    config = apply_overrides(config, overrides)
    check_settings(config)   # every setting sane before any work starts
    return config


def check_splits(name: str) -> None:
    """Refuse to run experiment `name` over several processes unless its run splits over them."""
    if not get_pipeline(get_experiment(name).pipeline).splits:
        splitting = [n for n, e in EXPERIMENTS.items() if get_pipeline(e.pipeline).splits]
        raise ValueError(f"{name} does not split over processes; --nproc works for {', '.join(splitting)} (run it "
                         "without --nproc or torchrun)")


def run_experiment(name: str, profile: str, out_dir: str | Path, data_dir: str | Path | None = None,
                   classifier_checkpoint: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run a named experiment with a profile (and "key=value" overrides of its settings), writing
    results.json, report.md and figures to out_dir."""
    exp = get_experiment(name)
    config = experiment_config(name, profile, data_dir, classifier_checkpoint, overrides)
    if exp.needs_data_dir and data_dir is None and default_data_dir() is None:
        raise ValueError(f"{name} needs --data-dir pointing at your copy of {exp.dataset.upper()} "
                         f"(see docs/data.md), or LATENTDEFENCE_DATA_DIR; it cannot be downloaded here")
    pipeline = get_pipeline(exp.pipeline)
    if os.environ.get("WORLD_SIZE", "1") != "1":
        check_splits(name)
    workers = Workers.from_environment()
    if workers is not None and not workers.leader:
        with tempfile.TemporaryDirectory() as scratch:   # rank 0 alone writes the results folder
            return pipeline.run(config, scratch)
    with staged_folder(out_dir) as staging:     # all of the run's files appear together, or none do
        results = pipeline.run(config, staging)
    results.setdefault("experiment", name)
    return results
