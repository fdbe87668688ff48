"""Every experiment's smoke profile stays small (issue 23): its sizes, step counts and model sizes, not its wall
time, parametrised over every experiment so a new pipeline is covered the day it is added to `experiment_config`."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import fields, is_dataclass, replace
from typing import Any

import pytest
import torch

from latentdefence.experiments import EXPERIMENTS, experiment_config
from latentdefence.experiments.dld_config import DLDExperimentConfig
from latentdefence.experiments.dld_ablation import DLDAblationConfig
from latentdefence.experiments.lad_config import SPECS, LadConfig
from latentdefence.experiments.lad_ablation import rows as lad_ablation_rows
from latentdefence.experiments.overrides import apply_overrides
from latentdefence.models import create_model

IMAGES = 1000        # images (or samples) any one stage of a smoke run reads, trains on or attacks
PER_CLASS = 10       # images per class (times the number of classes)
EPOCHS = 2           # passes over a training set
STEPS = 20           # iterations of an attack, a search or a full-batch fit
REPEATS = 3          # restarts, candidates and targets per image
WEIGHTS = 1_500_000  # weights of each classifier a smoke run trains or fine-tunes
BOUNDS = [  # (pattern on a setting's dotted path, bound); the first that matches applies
    (r"eps_ramp_epochs$", None),                                    # a fraction of training, not a count
    (r"(^|\.)svm_epochs$|(^|[._])steps$|_queries$", STEPS),
    (r"epochs$", EPOCHS),
    (r"per_class$", PER_CLASS),
    (r"restarts$|candidates$|targets$", REPEATS),
    (r"(^|\.)n(\.\w+)?$|(^|\.)n_\w+$|_limit$|max_train$|_samples$|_masking$", IMAGES),
]
NONE_MEANS_BOUNDED = {"rerun_per_class"}  # None = every image of the (bounded) white-box set


def _leaves(obj: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every setting inside a config (dataclasses, mappings, tuples)."""
    if is_dataclass(obj) and not isinstance(obj, type):
        for f in fields(obj):
            yield from _leaves(getattr(obj, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _leaves(value, f"{path}.{key}")
    elif isinstance(obj, (list, tuple)) and obj and not isinstance(obj[0], (int, float)):
        for value in obj:
            yield from _leaves(value, path)
    else:
        yield path, obj


def _inert(config: Any, path: str) -> bool:
    """The PGD training steps of a classifier that is not PGD-trained are never run (every such classifier, where a
    path runs through a tuple of rows)."""
    if not path.endswith(".steps"):
        return False
    nodes = [config]
    for part in path.split(".")[:-1]:
        nodes = [getattr(n, part) for node in nodes for n in (node if isinstance(node, (list, tuple)) else [node])]
    modes = [getattr(node, "adversarial", None) for node in nodes]   # a classifier's training mode
    return all(isinstance(mode, str) and mode != "pgd" for mode in modes)


def _too_big(config: Any) -> list[str]:
    """Every size or count of `config` over its bound (or unbounded: None meaning 'all')."""
    problems = []
    for path, value in _leaves(config):
        bound = next((b for pattern, b in BOUNDS if re.search(pattern, path)), None)
        if bound is None or isinstance(value, bool) or _inert(config, path):
            continue
        if value is None and path.rsplit(".", 1)[-1] not in NONE_MEANS_BOUNDED:
            problems.append(f"{path}=None (all)")
        elif isinstance(value, (int, float)) and value > bound:
            problems.append(f"{path}={value} > {bound}")
    return problems


def _weights(config: Any) -> dict[str, int]:
    """Weights of each classifier architecture the config trains (LAD: classifier and black model; DLD: F)."""
    if isinstance(config, LadConfig):
        spec = SPECS[config.dataset]
        kw: dict[str, Any] = {"width": config.model_width} if config.model_width != 1.0 else {}
        if spec.sized:
            kw["image_size"] = config.loader_kwargs.get("image_size", 128)
        return {arch: sum(p.numel() for p in create_model(arch, **kw).parameters()) for arch in (spec.classifier, spec.black)}
    if isinstance(config, DLDExperimentConfig) and config.classifier_checkpoint is None:
        model = create_model(config.classifier.arch, **config.classifier.model_kwargs())
        return {config.classifier.arch: sum(p.numel() for p in model.parameters())}
    return {}


def _configs(config: Any) -> Iterator[tuple[str, Any]]:
    """The config and every variant the pipeline runs: DLD ablation rows, LAD ablation rows, a nested DLD run."""
    yield "", config
    if isinstance(config, DLDAblationConfig):
        for row in config.rows:
            yield f"row {row.name!r}: ", apply_overrides(config.reference, row.changes)
    if isinstance(config, LadConfig):
        for row in lad_ablation_rows(config.long_epochs):
            yield f"row {row.name!r}: ", replace(config, finetune=replace(config.finetune, **(row.finetune or {})))
    dld = getattr(config, "dld", None)
    if isinstance(dld, DLDExperimentConfig):
        yield "dld: ", dld


def _one_per_pipeline_and_dataset() -> list[str]:
    """The first experiment of each (pipeline, dataset): the others share its config."""
    first: dict[tuple[str, str], str] = {}
    for name, exp in EXPERIMENTS.items():
        first.setdefault((exp.pipeline, exp.dataset), name)
    return list(first.values())


@pytest.mark.parametrize("name", _one_per_pipeline_and_dataset())
def test_smoke_profile_sizes_and_step_counts_stay_small(name: str) -> None:
    problems = []
    for label, config in _configs(experiment_config(name, "smoke")):
        problems += [label + p for p in _too_big(config)]
        problems += [f"{label}{arch}: {n:,} weights > {WEIGHTS:,}" for arch, n in _weights(config).items() if n > WEIGHTS]
    assert not problems, f"{name}'s smoke profile grew: " + "; ".join(problems)
    assert _too_big(experiment_config(name, "cpu")), "the bounds must tell the smoke profile from the cpu one"


def test_the_bounds_catch_what_made_the_svhn_smoke_test_take_minutes() -> None:
    config = experiment_config("lad-svhn-table5", "smoke")
    assert _weights(replace(config, model_width=1.0))["svhn_net"] > 30 * WEIGHTS   # the full-width svhnNet
    assert _too_big(replace(config, generator_train_limit=None)) == ["generator_train_limit=None (all)"]
    assert _too_big(replace(config, long_epochs=10)) == ["long_epochs=10 > 2"]
    assert _too_big(apply_overrides(config, ["attack.pgd_steps=40"])) == ["attack.pgd_steps=40 > 20"]
    dld = experiment_config("dld-mnist-table1", "smoke")
    assert _too_big(replace(dld, n_validation=5000)) == ["n_validation=5000 > 1000"]
    assert _too_big(replace(dld, attacks=replace(dld.attacks, n={**dld.attacks.n, "cw": None}))) == ["attacks.n.cw=None (all)"]
    assert _too_big(apply_overrides(dld, ["encoder.steps=40"])) == ["encoder.steps=40 > 20"]
    assert _too_big(apply_overrides(dld, ["classifier.steps=40"])) == []        # FGSM-RS training runs no PGD steps
    assert _too_big(apply_overrides(dld, ["classifier.adversarial=pgd", "classifier.steps=40"])) == ["classifier.steps=40 > 20"]


def test_the_lad_smoke_profile_leaves_every_mnist_class_enough_training_images_for_its_controls() -> None:
    """`reproduce lad-mnist-table2 --profile smoke` stopped at its controls ("class 5 has 17 images left, 18
    requested"): the first 256 MNIST training images hold 17 fives, and the positive controls craft one set of up to
    18 per class from them. 512 images hold at least 40 of every class."""
    from latentdefence.data import load_dataset
    from latentdefence.experiments.lad_config import lad_config

    limit = lad_config("smoke").train_limit
    counts = torch.bincount(load_dataset("mnist").train.labels[:limit], minlength=10)
    assert int(counts.min()) >= 40, f"the smoke profile's {limit} training images hold {counts.tolist()} per class"
