"""LAD experiment: a smoke run on tiny synthetic digits writes every required result, and caches its stages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latentdefence.data.base import ImageDataset, Splits
from latentdefence.experiments.lad import run_lad
from latentdefence.experiments.lad_config import ATTACKS, lad_config


def tiny_digits(n_train: int = 200, n_test: int = 120, seed: int = 0) -> Splits:
    """Noise with a bright 4x4 block whose position encodes the class: learnable in one epoch."""
    g = torch.Generator().manual_seed(seed)

    def make(n: int, split: str) -> ImageDataset:
        labels = torch.arange(n) % 10
        images = torch.rand(n, 1, 28, 28, generator=g) * 0.3
        for i, c in enumerate(labels.tolist()):
            r, col = 2 + 8 * (c // 4), 2 + 6 * (c % 4)
            images[i, 0, r:r + 4, col:col + 4] = 1.0
        return ImageDataset(images, labels, "tiny", split)

    return Splits(make(n_train, "train"), make(n_test, "test"))




pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, object]:
    root = tmp_path_factory.mktemp("lad")
    config = lad_config("smoke", cache_root=str(root / "cache"))
    results = run_lad(config, root / "out", data=tiny_digits())
    return root, results, config


def test_results_have_the_required_keys(smoke: tuple[Path, dict, object]) -> None:
    root, results, _ = smoke
    on_disk = json.loads((root / "out" / "results.json").read_text())
    for key in ("generator", "table2", "table3", "table4", "fig5", "fig7", "settings", "seed", "git_revision",
                "environment", "wall_time_s", "split"):
        assert key in on_disk, key
    assert set(on_disk["generator"]) >= {"train_mse", "test_mse"}
    for table in ("table2", "table3"):
        assert set(on_disk[table]) == set(ATTACKS)
        for row in on_disk[table].values():
            assert set(row) >= {"original", "finetuned", "n"} and 0 <= row["original"] <= 1 and row["n"] > 0
    assert {"original", "ours", *ATTACKS} <= set(on_disk["table4"])
    assert len(on_disk["fig5"]["eps"]) == 3 and len(on_disk["fig7"]["clean_accuracy"]["finetuned"]) == 3
    for name in ("report.md", "fig3_reconstructions.png", "fig4_examples.png", "fig5_success_rate.png",
                 "fig6_transitions.png", "fig7_accuracy_vs_eps.png"):
        assert (root / "out" / name).stat().st_size > 0, name
    assert "Table IV" in (root / "out" / "report.md").read_text()


def test_results_hold_set_statistics_controls_and_both_white_box_readings(smoke: tuple[Path, dict, object]) -> None:
    _, results, config = smoke
    small = results["finetune_sets"]["small_adv"]
    assert small["n"] == results["sets"]["small_adv"] and 0 <= small["misclassified"] <= 1
    assert small["l2"]["q25"] <= small["l2"]["median"] <= small["l2"]["q75"] and small["linf"]["median"] <= 1
    assert set(results["finetune_sets"]["large_adv"]) == {"0.1", "5", "20"}
    for table in ("table2", "table3"):
        block = results["baselines"][table]
        assert set(block["controls"]) == {"reconstruction", "clean", "pgd", "fgsm"}
        for control, diff in block["lad_minus_control"].items():
            for key, value in diff.items():
                assert value == pytest.approx(block["lad"]["mean"][key] - block["controls"][control]["mean"][key])
    for name in ("fgsm", "pgd"):
        row = results["table2"][name]
        assert 0 <= row["finetuned_rerun"] <= 1 and row["finetuned_ci95"][0] <= row["finetuned"] <= row["finetuned_ci95"][1]
        assert len(row["finetuned_seeds"]) == len(config.finetune_seeds)


def test_generated_and_build_sets_stay_out_of_evaluation(smoke: tuple[Path, dict, object]) -> None:
    _, results, _ = smoke
    split = {k: set(v) for k, v in results["split"].items()}
    assert not (split["boundary"] | split["generation"] | split["small"]) & split["evaluation"]
    assert len(split["boundary"]) == 30 and len(split["evaluation"]) == results["dataset_sizes"]["evaluation"]


def test_second_run_reuses_every_stage(smoke: tuple[Path, dict, object]) -> None:
    root, first, config = smoke
    again = run_lad(config, root / "again", data=tiny_digits())
    assert again["table2"] == first["table2"] and again["generator"] == first["generator"]
    assert again["wall_time_s"]["total"] < first["wall_time_s"]["total"]


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown profile"):
        lad_config("huge")
    with pytest.raises(KeyError, match="unknown LAD dataset"):
        lad_config("smoke", "imagenet")
