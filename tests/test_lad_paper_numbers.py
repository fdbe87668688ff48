"""What LAD's Tables II/III measure (issue 21): unclipped FGSM/PGD, the interval comparison, and a smoke run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from latentdefence.attacks import create_attack
from latentdefence.experiments.lad_paper_numbers import (COLUMNS, compare, paper_numbers_config, render_paper_numbers,
                                                         run_paper_numbers)
from latentdefence.models import create_model
from latentdefence.training import load_checkpoint

from test_lad_experiment import tiny_digits


def test_unclipped_fgsm_and_pgd_leave_the_box_within_eps() -> None:
    torch.manual_seed(0)
    model = create_model("lenet5").eval()
    x = torch.zeros(8, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0                                  # every pixel at a bound: clipping always bites
    y = torch.arange(8)
    for name, kw in (("fgsm", {}), ("pgd", {"steps": 3, "step_size": 0.1, "generator": torch.Generator().manual_seed(0)})):
        clipped = create_attack(name, eps=0.3, **kw)(model, x, y).images
        free = create_attack(name, eps=0.3, clip=False, **kw)(model, x, y).images
        assert clipped.min() >= 0 and clipped.max() <= 1
        assert free.min() < -0.1 and free.max() > 1.1, name     # leaves [0, 1] on both sides
        assert (free - x).abs().max() <= 0.3 + 1e-6              # still inside the eps ball
    assert create_attack("fgsm", eps=0.3, clip=False).describe()["clip"] is False


def test_compare_calls_overlapping_intervals_no_measurable_difference() -> None:
    a = {"accuracy": 0.30, "ci95": [0.28, 0.32]}
    assert compare(a, {"accuracy": 0.31, "ci95": [0.29, 0.33]}) == {"pp": -1.0, "verdict": "no measurable difference"}
    assert compare(a, {"accuracy": 0.10, "ci95": [0.09, 0.11]}) == {"pp": 20.0, "verdict": "higher"}


def test_smoke_run_has_every_row_with_intervals(tmp_path: Path) -> None:
    config = paper_numbers_config("smoke")
    config = replace(config, lad=replace(config.lad, cache_root=str(tmp_path / "cache")))
    results = run_paper_numbers(config, tmp_path / "out", data=tiny_digits())
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    keys = [r["key"] for r in on_disk["rows"]]
    assert keys == ["original", "lad", "control", "drift", "retrain-lad", "retrain-control", "long-lad", "long-control", "long-lad-alpha0",
                    "long-control-alpha0", "variant-original", "variant-lad", "variant-control", "unclipped-original",
                    "unclipped-lad", "unclipped-control"]
    for row in on_disk["rows"]:
        assert set(COLUMNS) <= set(row["summary"]), row["key"]
        for cell in row["summary"].values():
            lo, hi = cell["ci95"]
            assert 0 <= lo <= cell["accuracy"] + 1e-9 and cell["accuracy"] <= hi + 1e-9 <= 1 + 1e-9 and cell["n"] > 0
    by = {r["key"]: r for r in on_disk["rows"]}
    assert {"white/jsma", "white/cw"} <= set(by["drift"]["summary"]) and "white/jsma" not in by["long-lad"]["summary"]
    assert by["drift"]["seeds"] == by["retrain-lad"]["seeds"] == list(config.drift_seeds) and 0 not in config.drift_seeds
    classifiers = sorted((tmp_path / "cache").glob("lad-classifier-*"))
    assert len(classifiers) == 1 + 3 * len(config.drift_seeds) + 1  # original, fresh seeds (x3: clean, + LAD, + recon), ReLU
    weights = [load_checkpoint(p / "final")[0].state_dict()["stages.conv1.0.weight"] for p in classifiers]
    assert all(not torch.equal(a, b) for i, a in enumerate(weights) for b in weights[i + 1:] if a.shape == b.shape)
    archs = sorted(load_checkpoint(p / "final")[0].arch for p in classifiers)
    assert archs == ["lenet5"] * (1 + 3 * len(config.drift_seeds)) + ["lenet5_relu"]
    ranges = on_disk["pixel_range"]
    assert all(0 <= lo and hi <= 1 for family in ("clipped", "variant") for lo, hi in ranges[family].values())
    assert ranges["unclipped"]["white/fgsm"][0] < 0                 # the unclipped sets really leave [0, 1]
    assert on_disk["findings"]["drift_minus_original"].keys() == {"white/fgsm", "white/pgd", "white/jsma", "white/cw"}
    text = (tmp_path / "out" / "report.md").read_text()
    assert text == render_paper_numbers(results) and "paper: original LeNet | — | 4500 | 99.13 | 1.77 | 0.60" in text
