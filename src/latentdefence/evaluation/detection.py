"""Metrics for a classifier guarded by a detector, any detector of the shared contract.

* robustness (DLD's definition, Section V): an adversarial example is classified correctly, or misclassified
  and flagged; computed with `dld.evaluate.attack_metrics` at the detector's calibrated threshold;
* undetected success rate (SR): misclassified and not flagged (= 1 - robustness at that threshold), also at
  thresholds set for other false-positive rates (SR@FPR) -- on the clean *calibration* images only, never
  on evaluated ones;
* ROC (AUC and the curve on a fixed FPR grid): misclassified adversarial examples vs clean evaluation images,
  for the summed score and per layer;
* per-image worst case over several attacks: an input counts as broken if any attack broke it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..dld.evaluate import attack_metrics, roc_auc, roc_points
from ..dld.nonconformity import calibrate_threshold

FPR_GRID = np.concatenate([np.linspace(0, 0.1, 51), np.linspace(0.11, 1, 90)])


@dataclass(frozen=True)
class Verdicts:
    """A detector's output on a set of images: F's class, the flag, the score (higher = more suspicious)."""

    predicted: torch.Tensor              # (N,)
    flagged: torch.Tensor                # (N,) bool, at the calibrated threshold
    score: torch.Tensor                  # (N,)
    per_layer: dict[str, torch.Tensor]   # layer -> (N,)

    def select(self, rows: torch.Tensor) -> "Verdicts":
        """The rows picked by a mask or index."""
        return Verdicts(self.predicted[rows], self.flagged[rows], self.score[rows],
                        {k: v[rows] for k, v in self.per_layer.items()})


def verdicts(detector: Any, images: torch.Tensor, batch_size: int = 500) -> Verdicts:
    """`detector.predict` in batches, as `Verdicts` (on CPU); a detector without `per_layer` gets none."""
    parts = [detector.predict(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    layers = (getattr(parts[0], "per_layer", None) or {}).keys() if parts else []   # per-layer scores are optional
    return Verdicts(torch.cat([p.predicted.cpu() for p in parts]), torch.cat([p.is_adversarial.cpu() for p in parts]),
                    torch.cat([p.nonconformity.detach().cpu().to(torch.float64) for p in parts]),
                    {k: torch.cat([p.per_layer[k].detach().cpu().to(torch.float64) for p in parts]) for k in layers})


def thresholds_at_fpr(calibration: Verdicts, fprs: Sequence[float]) -> dict[str, float]:
    """Per target FPR, the threshold on the summed score set on the calibration images alone."""
    return {f"{fpr:g}": calibrate_threshold(calibration.score, fpr) for fpr in fprs}


def detection_metrics(labels: torch.Tensor, adversarial: Verdicts, clean: Verdicts, calibration: Verdicts,
                      fprs: Sequence[float] = (0.01, 0.05), target_fpr: float = 0.02) -> dict[str, Any]:
    """Robustness, SR at the calibrated threshold and at each FPR, ROC AUC and curve, per layer too."""
    wrong = adversarial.predicted != labels
    row = attack_metrics(labels, adversarial.predicted, adversarial.flagged, adversarial.score, clean.score).as_dict()
    row["undetected_success_rate"] = float((wrong & ~adversarial.flagged).float().mean())
    row["sr_at_fpr"] = {}
    for key, t in thresholds_at_fpr(calibration, fprs).items():
        row["sr_at_fpr"][key] = {"threshold": t, "sr": float((wrong & (adversarial.score <= t)).float().mean()),
                                 "clean_fpr": float((clean.score > t).float().mean())}
    row["roc"] = roc_on_grid(adversarial.score[wrong], clean.score)
    row["per_layer"] = {}
    for layer, score in adversarial.per_layer.items():
        t = calibrate_threshold(calibration.per_layer[layer], target_fpr)
        row["per_layer"][layer] = {"roc_auc": roc_auc(score[wrong], clean.per_layer[layer]), "threshold": t,
                                   "robustness": float((~wrong | (score > t)).float().mean())}
    return row


def roc_on_grid(positive: torch.Tensor, negative: torch.Tensor) -> dict[str, list[float]]:
    """The ROC curve's TPR at a fixed FPR grid (dense below 10%), so curves of any size store alike."""
    if len(positive) == 0 or len(negative) == 0:
        return {"fpr": [], "tpr": []}
    fpr, tpr = roc_points(positive, negative)
    return {"fpr": [round(float(f), 4) for f in FPR_GRID],
            "tpr": [round(float(t), 4) for t in np.interp(FPR_GRID, fpr, tpr)]}


def worst_case(labels: torch.Tensor, sets: Mapping[str, Verdicts], calibration: Verdicts,
               fprs: Sequence[float] = (0.01, 0.05)) -> dict[str, Any]:
    """Per image, broken if any attack in `sets` broke it: robustness at the calibrated threshold and SR@FPR."""
    broken = torch.zeros(len(labels), dtype=torch.bool)
    for v in sets.values():
        broken |= (v.predicted != labels) & ~v.flagged
    out: dict[str, Any] = {"attacks": list(sets), "n": len(labels), "robustness": 1 - float(broken.float().mean()),
                           "undetected_success_rate": float(broken.float().mean()), "sr_at_fpr": {}}
    for key, t in thresholds_at_fpr(calibration, fprs).items():
        hit = torch.zeros(len(labels), dtype=torch.bool)
        for v in sets.values():
            hit |= (v.predicted != labels) & (v.score <= t)
        out["sr_at_fpr"][key] = float(hit.float().mean())
    return out
