"""The detection metrics added for issue 17: AUC intervals, the ROC point at an exact FP rate, the OR rule."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import roc_curve

from latentdefence.evaluation.detection import max_layer_score, tpr_at_fpr
from latentdefence.stats import auc_interval, roc_auc


def test_auc_interval_contains_the_auc_and_narrows_with_more_samples() -> None:
    lo, hi = auc_interval(0.9, 50, 1000)
    lo2, hi2 = auc_interval(0.9, 2000, 9000)
    assert lo < 0.9 < hi and lo2 < 0.9 < hi2 and (hi2 - lo2) < (hi - lo) / 4
    # Hanley & McNeil's formula by hand: AUC 0.8, 45 / 45: Q1 = 2/3, Q2 = 0.7111, var = 4.4622 / 2025, SE 0.04694
    lo3, hi3 = auc_interval(0.8, 45, 45)
    assert (hi3 - lo3) / (2 * 1.96) == pytest.approx(0.04694, abs=1e-4)
    assert all(math.isnan(v) for v in auc_interval(0.9, 0, 10))


def test_tpr_at_fpr_matches_the_roc_curve_where_it_has_a_vertex_and_interpolates_ties() -> None:
    gen = torch.Generator().manual_seed(0)
    neg, pos = torch.randn(1000, generator=gen), torch.randn(300, generator=gen) + 1.5
    fpr, tpr, _ = roc_curve([1] * 300 + [0] * 1000, torch.cat([pos, neg]).numpy())
    for target in (0.01, 0.05, 0.2):
        assert tpr_at_fpr(pos, neg, target) == pytest.approx(float(tpr[fpr <= target + 1e-12].max()), abs=1e-9)
    # integer scores: 10 negatives at 0, 10 at 1; at FP 25% half of the ties at 1 are flagged
    neg_int = torch.tensor([0.0] * 10 + [1.0] * 10)
    pos_int = torch.tensor([1.0] * 4 + [2.0] * 6)
    assert tpr_at_fpr(pos_int, neg_int, 0.25) == pytest.approx((6 + 0.5 * 4) / 10)
    assert tpr_at_fpr(pos_int, neg_int, 0.0) == pytest.approx(0.6)
    assert tpr_at_fpr(pos_int, neg_int, 1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr(pos_int, neg_int, 1.5)


def test_max_layer_score_is_the_or_of_per_layer_quantile_thresholds() -> None:
    cal = {"a": torch.arange(100.0), "b": torch.arange(100.0) * 2}
    x = {"a": torch.tensor([10.0, 95.0, 0.0]), "b": torch.tensor([190.0, 0.0, 20.0])}
    s = max_layer_score(x, cal)
    assert s.tolist() == pytest.approx([0.95, 0.95, 0.10])
    flagged = s > 0.9
    assert flagged.tolist() == [True, True, False]
    assert roc_auc(max_layer_score(cal, cal)[90:], max_layer_score(cal, cal)[:90]) == 1.0
