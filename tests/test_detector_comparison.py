"""DeLong's paired AUC test against a brute-force oracle, and detectors compared on the same attacked images."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from latentdefence.dld import DeepLatentDefence, EncoderTrainConfig, train_encoder
from latentdefence.stats import roc_auc
from latentdefence.evaluation.detector_comparison import compare_detectors, delong_paired, write_detector_comparison
from toy_blobs import blobs, trained_tiny_model


def _brute_force(pos_a, neg_a, pos_b, neg_b) -> tuple[float, float]:
    """The difference and its variance from the full psi matrices (DeLong et al. 1988, eqs. by definition)."""
    comps10, comps01 = [], []
    for pos, neg in ((pos_a, neg_a), (pos_b, neg_b)):
        psi = (pos[:, None] > neg[None, :]).double() + 0.5 * (pos[:, None] == neg[None, :]).double()   # (m, n)
        comps10.append(psi.mean(1))
        comps01.append(psi.mean(0))
    m, n = len(pos_a), len(neg_a)

    def var_of_diff(c: list[torch.Tensor]) -> float:
        d = c[0] - c[1]
        return float(((d - d.mean()) ** 2).sum() / (len(d) - 1))
    diff = float(comps10[0].mean() - comps10[1].mean())
    return diff, var_of_diff(comps10) / m + var_of_diff(comps01) / n


def test_delong_matches_the_definition_with_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    pos_a, neg_a = torch.randint(0, 8, (40,), generator=gen).double() + 2, torch.randint(0, 8, (70,), generator=gen).double()
    pos_b, neg_b = pos_a + torch.randint(-2, 3, (40,), generator=gen), neg_a + torch.randint(-2, 3, (70,), generator=gen)
    out = delong_paired(pos_a, neg_a, pos_b, neg_b)
    diff, var = _brute_force(pos_a, neg_a, pos_b, neg_b)
    assert out["auc_a"] == pytest.approx(roc_auc(pos_a, neg_a)) and out["auc_b"] == pytest.approx(roc_auc(pos_b, neg_b))
    assert out["difference"] == pytest.approx(diff)
    half = 1.96 * math.sqrt(var)
    assert out["difference_ci"] == pytest.approx([diff - half, diff + half])
    assert out["p_value"] == pytest.approx(math.erfc(abs(diff) / math.sqrt(var) / math.sqrt(2)))


def test_delong_sees_a_paired_gain_that_overlapping_intervals_hide() -> None:
    gen = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(60, generator=gen) + 1.0, torch.randn(3000, generator=gen)
    better = pos + 0.4                       # the same images, every positive a little more suspicious
    out = delong_paired(better, neg, pos, neg)
    assert out["difference"] > 0 and out["p_value"] < 0.01 and out["difference_ci"][0] > 0
    same = delong_paired(pos, neg, pos, neg)
    assert same["difference"] == 0 and same["p_value"] == 1.0


def test_delong_rejects_unpaired_or_tiny_sets() -> None:
    with pytest.raises(ValueError, match="same 1-D positives"):
        delong_paired(torch.rand(5), torch.rand(9), torch.rand(6), torch.rand(9))
    with pytest.raises(ValueError, match="at least 2 positives"):
        delong_paired(torch.rand(1), torch.rand(9), torch.rand(1), torch.rand(9))


def test_detectors_on_one_f_are_compared_paired_and_another_f_is_refused(tmp_path: Path) -> None:
    train = blobs(240, 0)
    model = trained_tiny_model(train)
    cfg = EncoderTrainConfig(epochs=2, batch_size=60, eps=0.1, steps=1, step_size=0.05, width=4)
    eds = {tap: train_encoder(model, tap, train, latent_dim=3, config=cfg) for tap in ("layer1", "layer2")}
    dets = {f"k{k}": DeepLatentDefence(model, ("layer1", "layer2"), k=k, latent_dim=3, encoders=eds).fit(train)
            for k in (3, 9)}
    test = blobs(120, 5)
    adversarial = test.images.clone()
    adversarial[::2] = test.images.roll(1, dims=0)[::2]          # every other image shows another class: F is "fooled"
    out = compare_detectors(dets, test.images, adversarial, test.labels)
    assert out["positives"] >= 2 and out["reference"] == "k3" and "versus_first" in out["rows"][1]
    assert 0 <= out["rows"][0]["roc_auc"] <= 1 and 0 <= out["rows"][1]["versus_first"]["p_value"] <= 1
    report = (write_detector_comparison(out, {"attack": "noise"}, tmp_path) / "report.md").read_text()
    assert "DeLong" in report and "k9" in report
    other = trained_tiny_model(train, steps=5)
    stranger = DeepLatentDefence(other, ("layer1",), k=3, latent_dim=3, encoders={"layer1": eds["layer1"]}).fit(train)
    with pytest.raises(ValueError, match="different classifier"):
        compare_detectors({**dets, "other F": stranger}, test.images, adversarial, test.labels)
