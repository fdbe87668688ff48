"""Detectors side by side on the same attacked images: ROC AUCs with intervals, and DeLong's paired test against the
first, which has far more power than two overlapping Hanley-McNeil intervals when positives and negatives are shared.

Positives are the adversarial images F misclassifies, negatives the clean images (DLD's definition, as in
`evaluation.detection`); every detector must guard the same F, so both sets are the same for every detector.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .._io import write_comparison_files
from ..detectors.base import ConformalDetector
from ..stats import auc_interval, roc_auc


def _placements(scores: torch.Tensor, against: torch.Tensor) -> torch.Tensor:
    """For each score, the share of `against` it beats (ties count half): DeLong's structural components."""
    ordered = against.to(torch.float64).sort().values
    s = scores.to(torch.float64)
    below = torch.searchsorted(ordered, s, side="left").to(torch.float64)
    at_or_below = torch.searchsorted(ordered, s, side="right").to(torch.float64)
    return (below + 0.5 * (at_or_below - below)) / len(ordered)


def delong_paired(positive_a: torch.Tensor, negative_a: torch.Tensor, positive_b: torch.Tensor,
                  negative_b: torch.Tensor) -> dict[str, Any]:
    """DeLong, DeLong & Clarke-Pearson (1988): AUC_a - AUC_b for two scores (higher = more suspicious) of the same
    positives and negatives, its 95% interval and the two-sided p-value of "no difference"."""
    if positive_a.shape != positive_b.shape or negative_a.shape != negative_b.shape or positive_a.ndim != 1 \
            or negative_a.ndim != 1:
        raise ValueError(f"paired scores need the same 1-D positives and negatives, got {tuple(positive_a.shape)} / "
                         f"{tuple(positive_b.shape)} and {tuple(negative_a.shape)} / {tuple(negative_b.shape)}")
    m, n = len(positive_a), len(negative_a)
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's test needs at least 2 positives and 2 negatives, got {m} and {n}")
    v10 = torch.stack([_placements(positive_a, negative_a), _placements(positive_b, negative_b)])    # (2, m)
    v01 = torch.stack([1 - _placements(negative_a, positive_a), 1 - _placements(negative_b, positive_b)])  # (2, n)
    auc = v10.mean(dim=1)
    var = (_diff_variance(torch.cov(v10)) / m + _diff_variance(torch.cov(v01)) / n)
    diff = float(auc[0] - auc[1])
    se = math.sqrt(max(var, 0.0))
    p = 1.0 if se == 0 else math.erfc(abs(diff) / se / math.sqrt(2))
    return {"auc_a": float(auc[0]), "auc_b": float(auc[1]), "difference": diff,
            "difference_ci": [diff - 1.96 * se, diff + 1.96 * se], "p_value": p}


def _diff_variance(cov: torch.Tensor) -> float:
    return float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


def compare_detectors(detectors: Mapping[str, ConformalDetector], clean: torch.Tensor, adversarial: torch.Tensor,
                      labels: torch.Tensor) -> dict[str, Any]:
    """Each detector's AUC (Hanley-McNeil 95% interval) on the same images, and each against the first, paired."""
    if not detectors:
        raise ValueError("compare_detectors needs at least one detector")
    if clean.shape != adversarial.shape or labels.shape != clean.shape[:1]:
        raise ValueError(f"clean {tuple(clean.shape)}, adversarial {tuple(adversarial.shape)} and labels "
                         f"{tuple(labels.shape)} must describe the same images")
    scores: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    predictions: dict[str, torch.Tensor] = {}
    for name, det in detectors.items():
        predictions[name], adv_score, _ = det.nonconformity(adversarial)
        scores[name] = (adv_score.to(torch.float64), det.nonconformity(clean)[1].to(torch.float64))
    first = next(iter(detectors))
    for name, pred in predictions.items():
        if not torch.equal(pred, predictions[first]):
            raise ValueError(f"detector {name!r} guards a different classifier than {first!r}: its F predicts other "
                             f"classes on the attacked images, so the positives would differ")
    wrong = predictions[first].cpu() != labels.cpu()
    rows: list[dict[str, Any]] = []
    for name, (adv_score, clean_score) in scores.items():
        pos = adv_score[wrong]
        auc = roc_auc(pos, clean_score)
        row: dict[str, Any] = {"name": name, "roc_auc": auc, "roc_auc_ci": list(auc_interval(auc, len(pos), len(clean_score)))}
        if name != first and len(pos) >= 2:
            ref_adv, ref_clean = scores[first]
            row["versus_first"] = delong_paired(pos, clean_score, ref_adv[wrong], ref_clean)
        rows.append(row)
    return {"n": len(labels), "positives": int(wrong.sum()), "negatives": len(labels), "reference": first, "rows": rows}


def write_detector_comparison(comparison: Mapping[str, Any], settings: Mapping[str, Any], out_dir: str | Path) -> Path:
    """results.json (with the settings, git revision and machine) and report.md in `out_dir`; returns it."""
    return write_comparison_files(out_dir, comparison, settings, detector_comparison_report(comparison, settings))


def detector_comparison_report(comparison: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
    """Markdown: one row per detector; the paired columns say whether it differs from the first."""
    lines = [f"# Detectors on the same attacked images ({comparison['positives']} positives, "
             f"{comparison['negatives']} negatives)", "",
             "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items()), "",
             f"| detector | ROC AUC [95% CI] | minus {comparison['reference']} [95% CI] | DeLong p |", "|---|---|---|---|"]
    for r in comparison["rows"]:
        lo, hi = r["roc_auc_ci"]
        paired = r.get("versus_first")
        pair = (f"{paired['difference']:+.3f} [{paired['difference_ci'][0]:+.3f}, {paired['difference_ci'][1]:+.3f}] | "
                f"{paired['p_value']:.2g}" if paired else "(reference) | —")
        lines.append(f"| {r['name']} | {r['roc_auc']:.3f} [{lo:.3f}, {hi:.3f}] | {pair} |")
    lines += ["", "Positives: the attacked images F misclassifies; negatives: the same images clean; score: each "
              "detector's non-conformity. Intervals: Hanley-McNeil 95% per AUC; DeLong's paired test (1988) for the "
              "difference, whose interval is narrower because both detectors score the same images. p < 0.05: a "
              "measured difference.", ""]
    return "\n".join(lines)
