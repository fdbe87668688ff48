"""LAD ablation (issue 13): the fine-tuning-set statistics, Eq. 4 pairing and a smoke ablation on tiny digits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from latentdefence.data.base import ImageDataset
from latentdefence.experiments.lad import lad_config
from latentdefence.experiments.lad_ablation import rows, run_lad_ablation, upstream_rows
from latentdefence.lad.finetune import FinetuneConfig, finetune, finetune_set_statistics
from latentdefence.lad.generator import GeneratorConfig
from latentdefence.training.loop import TrainConfig

from test_lad_experiment import tiny_digits


class _Fixed(nn.Module):
    """Logits read off the first pixels: class c scores 10 * x[:, 0, 0, c]."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0, 0, :10] * 10


def test_statistics_measure_distance_margin_and_errors() -> None:
    sources = torch.zeros(4, 1, 28, 28)
    images = sources.clone()
    images[:, 0, 0, 0] = 1.0                 # class 0 scores 10 on every image
    images[1, 0, 0, 3] = 0.5                 # row 1: 10 - 5 = margin 5 for label 0
    images[2:, 0, 5, 5] = 0.25               # rows 2, 3 also move one far pixel
    data = ImageDataset(images, torch.tensor([0, 0, 0, 1]), "t", "test")
    stats = finetune_set_statistics(_Fixed(), data, sources)
    assert stats["n"] == 4 and stats["misclassified"] == pytest.approx(0.25)   # only row 3 (label 1) is wrong
    assert stats["linf"]["median"] == pytest.approx(1.0)
    assert stats["l2"]["mean"] == pytest.approx((1 + (1 + 0.25) ** 0.5 + 2 * (1 + 0.0625) ** 0.5) / 4, rel=1e-5)
    assert stats["logit_margin"]["median"] == pytest.approx(7.5)             # margins -10, 5, 10, 10
    assert stats["logit_margin"]["q75"] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="must match"):
        finetune_set_statistics(_Fixed(), data, sources[:2])


def test_paired_eq4_needs_one_clean_image_per_generated_image() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    data = ImageDataset(torch.rand(8, 1, 28, 28), torch.arange(8) % 10, "t", "test")
    with pytest.raises(ValueError, match="pair_clean"):
        finetune(model, data.subset(slice(0, 4)), data, FinetuneConfig(epochs=1, pair_clean=True))
    tuned = finetune(model, data, data, FinetuneConfig(epochs=1, batch_size=4, pair_clean=True))
    assert not torch.equal(tuned[1].weight, model[1].weight)


@pytest.mark.slow
def test_smoke_ablation_scores_every_row_and_control(tmp_path: Path) -> None:
    config = lad_config("smoke", cache_root=str(tmp_path / "cache"), attacks=("fgsm", "pgd"))
    refine = (GeneratorConfig(epochs=1, batch_size=32, seed=1), GeneratorConfig(epochs=2, batch_size=32, lr=1e-4, seed=2))
    upstream = upstream_rows(refine, TrainConfig(epochs=2, batch_size=32))
    report = run_lad_ablation(config, tmp_path / "out", data=tiny_digits(), upstream=upstream)
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    names = [r["name"] for r in on_disk["rows"]]
    assert names[:len(rows())] == [r.name for r in rows(config.long_epochs)]
    assert sum(r["factor"].startswith("control") for r in on_disk["rows"]) == 8       # 4 controls x 2 budgets
    assert [r["name"] for r in on_disk["rows"] if r["scores"] is None] == ["FT-10: Large Adv. eps 10 only"]  # no eps 10
    for row in (r for r in on_disk["rows"] if r["scores"] is not None):
        scores = row["scores"]
        assert set(scores["white"]) == set(scores["rerun"]) == set(scores["transfer"]) == {"fgsm", "pgd"}
        assert 0 <= scores["clean"]["accuracy"] <= 1 and row["set"]["n"] > 0
    assert len(report["attack_strength"]["rows"]) == 1 + 2 + 4
    refined, lenet, both = on_disk["upstream"]
    assert refined["generator"]["epochs"] == both["generator"]["epochs"] == 1 + 1 + 2 and lenet["generator"]["epochs"] == 1
    assert [p["epochs"] for p in refined["generator"]["phases"]] == [1, 2, 4] and "phases" not in lenet["generator"]
    assert refined["generator"]["phases"][-1]["test_mse"] == refined["generator"]["test_mse"]
    assert refined["original"] == on_disk["original"]                       # same LeNet, same attack sets
    assert len(list((tmp_path / "cache").glob("lad-generator-*"))) == 2 * 3  # per LeNet: G, then one stage per phase
    assert lenet["original"]["scores"]["white"] == both["original"]["scores"]["white"] != on_disk["original"]["scores"]["white"]
    for build in on_disk["upstream"]:
        assert [r["name"].split(":")[0] for r in build["rows"]] == ["Adv", "FT-0.1"] + ["control"] * 4
        assert all(r["scores"]["rerun"].keys() == {"fgsm", "pgd"} for r in build["rows"])
        seeds = build["table2_seeds"]                                          # seed 0 of the rows, and the mean
        assert seeds["lad"]["clean"] == build["rows"][0]["scores"]["clean"]
        assert set(seeds["lad_minus_control"]) == {"reconstruction", "clean", "pgd", "fgsm"}
    text = (tmp_path / "out" / "report.md").read_text()
    assert "Eq. 4 pairing" in text and "Attack strength" in text
    assert text.count("Adv minus reconstruction control") == 3 and "LeNet trained longer, its G trained longer" in text
    assert text.count("change vs this build's original LeNet") == 3
