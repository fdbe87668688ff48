"""Detection metrics for a classifier guarded by a detector, any detector of the shared contract, with DLD's
definitions (Section V).

* robustness: an adversarial example is classified correctly by F, or misclassified and detected (flagged at
  the detector's calibrated threshold);
* true positive: misclassified and detected. ``true_positive_rate`` = TP / misclassified examples;
  ``tp_increase`` = TP / all examples = robustness - base accuracy (Table II's "TP increase");
* false positive: a clean test sample flagged, also split into those F classifies correctly and
  incorrectly (both as fractions of all clean samples, as in the paper's 0.98% + 0.98% = 1.96%);
* undetected success rate (SR): misclassified and not flagged (= 1 - robustness at that threshold), also at
  thresholds set for other false-positive rates (SR@FPR) -- on the clean *calibration* images only, never
  on evaluated ones;
* ROC (AUC and the curve on a fixed FPR grid): misclassified adversarial examples are positives, clean
  evaluation images negatives, score = the detector's non-conformity (higher = more suspicious), for the
  summed score and per layer;
* per-image worst case over several attacks: an input counts as broken if any attack broke it.
Rates on subsets carry Wilson 95% intervals. A detector's output on a set of images is one `Detection`
(`verdicts` gathers it in batches).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_curve

from ..detectors.base import Detection, Evaluable, calibrate_threshold, evaded
from ..stats import roc_auc, scores_with_labels, wilson_interval

@dataclass(frozen=True)
class AttackMetrics:
    """One Table I row."""

    n: int
    base_accuracy: float
    robustness: float
    roc_auc: float
    true_positive_rate: float
    tp_increase: float
    base_accuracy_ci: tuple[float, float]
    robustness_ci: tuple[float, float]
    true_positive_rate_ci: tuple[float, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CleanMetrics:
    """False positives on clean test data at the calibrated threshold."""

    n: int
    accuracy: float
    fpr: float
    fpr_on_correct: float
    fpr_on_incorrect: float
    fpr_ci: tuple[float, float]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def clean_metrics(labels: torch.Tensor, predicted: torch.Tensor, flagged: torch.Tensor) -> CleanMetrics:
    """FP rate on clean samples, split by whether F is right."""
    _same_length(labels, predicted, flagged)
    n = len(labels)
    correct = predicted == labels
    fp = int(flagged.sum())
    return CleanMetrics(n, _rate(correct.sum(), n), _rate(fp, n), _rate((flagged & correct).sum(), n),
                        _rate((flagged & ~correct).sum(), n), wilson_interval(fp, n))


def attack_metrics(labels: torch.Tensor, predicted: torch.Tensor, flagged: torch.Tensor, scores: torch.Tensor,
                   clean_scores: torch.Tensor) -> AttackMetrics:
    """Table I metrics for adversarial examples (F's predictions, flags and non-conformity on them)."""
    _same_length(labels, predicted, flagged, scores)
    n = len(labels)
    correct = predicted == labels
    wrong = ~correct
    tp = int((wrong & flagged).sum())
    robust = int(correct.sum()) + tp
    return AttackMetrics(n=n, base_accuracy=_rate(correct.sum(), n), robustness=_rate(robust, n),
                         roc_auc=roc_auc(scores[wrong], clean_scores), true_positive_rate=_rate(tp, int(wrong.sum())),
                         tp_increase=_rate(tp, n), base_accuracy_ci=wilson_interval(int(correct.sum()), n),
                         robustness_ci=wilson_interval(robust, n),
                         true_positive_rate_ci=wilson_interval(tp, int(wrong.sum())))


def tpr_at_fpr(positive_scores: torch.Tensor, negative_scores: torch.Tensor, fpr: float) -> float:
    """The ROC point at exactly false-positive rate `fpr`: a randomised threshold test whose ties at the threshold
    are flagged with the probability that makes the negatives' rate exactly `fpr`; returns its expected TP rate
    (the mean over every random tie-break), so the number does not depend on a seed."""
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must lie in [0, 1], got {fpr}")
    if len(positive_scores) == 0 or len(negative_scores) == 0:
        return float("nan")
    neg = negative_scores.to(torch.float64).sort(descending=True).values
    allowed = fpr * len(neg)                                  # expected number of negatives flagged
    i = min(int(np.floor(allowed)), len(neg) - 1)
    t = neg[i]                                                # the threshold: the score the budget ends on
    above, at = float((neg > t).sum()), float((neg == t).sum())
    gamma = min(1.0, max(0.0, (allowed - above) / at))        # flag probability of a tie at t
    pos = positive_scores.to(torch.float64)
    return (float((pos > t).sum()) + gamma * float((pos == t).sum())) / len(pos)


def max_layer_score(per_layer: Mapping[str, torch.Tensor], calibration: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The OR of per-layer thresholds as one score: each layer's score as its calibration quantile (the share of
    calibration scores strictly below it), maximised over layers; a threshold on it flags an input when any layer
    exceeds that layer's own quantile, so one calibration gives a joint false-positive rate."""
    ranks = []
    for tap, scores in per_layer.items():
        cal = torch.sort(calibration[tap].to(torch.float64)).values
        ranks.append(torch.searchsorted(cal, scores.to(torch.float64), right=False).to(torch.float64) / len(cal))
    return torch.stack(ranks).max(0).values


def roc_points(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) for plotting a ROC curve."""
    y, s = scores_with_labels(positive_scores, negative_scores)
    fpr, tpr, _ = roc_curve(y, s)
    return fpr, tpr


def cumulative_layers(taps: Sequence[str], calibration: Mapping[str, torch.Tensor], clean: Mapping[str, torch.Tensor],
                      clean_wrong: torch.Tensor, adversarial: Mapping[str, torch.Tensor], adversarial_wrong: torch.Tensor,
                      target_fpr: float) -> list[dict[str, object]]:
    """Table II: with encoders on taps[:1], taps[:2], ..., re-calibrate and report TP increase and FP.

    Each mapping holds per-tap non-conformity; ``*_wrong`` marks the samples F misclassifies.
    """
    rows = []
    for depth in range(1, len(taps) + 1):
        used = list(taps[:depth])
        threshold = calibrate_threshold(_sum(calibration, used), target_fpr)
        adv_flag = _sum(adversarial, used) > threshold
        clean_flag = _sum(clean, used) > threshold
        rows.append({"layers": used, "threshold": threshold,
                     "tp_increase": _rate((adv_flag & adversarial_wrong).sum(), len(adv_flag)),
                     "fpr": _rate(clean_flag.sum(), len(clean_flag)),
                     "fpr_on_incorrect": _rate((clean_flag & clean_wrong).sum(), len(clean_flag))})
    return rows


def _sum(per_layer: Mapping[str, torch.Tensor], taps: Sequence[str]) -> torch.Tensor:
    return torch.stack([per_layer[t] for t in taps]).sum(0)


def _rate(count: torch.Tensor | int, n: int) -> float:
    return float(count) / n if n else float("nan")


def _same_length(*tensors: torch.Tensor) -> None:
    lengths = {tuple(t.shape) for t in tensors}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ValueError(f"expected 1-D tensors of one length, got shapes {sorted(lengths)}")


FPR_GRID = np.concatenate([np.linspace(0, 0.1, 51), np.linspace(0.11, 1, 90)])


def verdicts(detector: Evaluable, images: torch.Tensor, batch_size: int = 500) -> Detection:
    """`detector.predict` in batches, as one `Detection` on CPU with float64 scores; a detector without
    `per_layer` gets none, one without `credibility` NaN."""
    parts = [detector.predict(images[i:i + batch_size]) for i in range(0, len(images), batch_size)]
    layers = (getattr(parts[0], "per_layer", None) or {}).keys() if parts else []   # per-layer scores are optional

    def cat(field: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.cat([getattr(p, field).detach().cpu().to(dtype or getattr(p, field).dtype) for p in parts])

    predicted, score = cat("predicted"), cat("nonconformity", torch.float64)
    has_credibility = all(hasattr(p, "credibility") for p in parts)
    return Detection(predicted, cat("is_adversarial"),
                     cat("credibility", torch.float64) if has_credibility else torch.full_like(score, float("nan")),
                     score, {k: torch.cat([getattr(p, "per_layer")[k].detach().cpu().to(torch.float64) for p in parts])
                             for k in layers})


def thresholds_at_fpr(calibration: Detection, fprs: Sequence[float]) -> dict[str, float]:
    """Per target FPR, the threshold on the summed score set on the calibration images alone."""
    return {f"{fpr:g}": calibrate_threshold(calibration.nonconformity, fpr) for fpr in fprs}


def detection_metrics(labels: torch.Tensor, adversarial: Detection, clean: Detection, calibration: Detection,
                      fprs: Sequence[float] = (0.01, 0.05), target_fpr: float = 0.02) -> dict[str, Any]:
    """Robustness, SR at the calibrated threshold and at each FPR, ROC AUC and curve, per layer too."""
    wrong = adversarial.predicted != labels
    row = attack_metrics(labels, adversarial.predicted, adversarial.is_adversarial, adversarial.nonconformity,
                         clean.nonconformity).as_dict()
    row["undetected_success_rate"] = float(evaded(adversarial, labels).float().mean())
    row["sr_at_fpr"] = {}
    for key, t in thresholds_at_fpr(calibration, fprs).items():
        row["sr_at_fpr"][key] = {"threshold": t,
                                 "sr": float((wrong & (adversarial.nonconformity <= t)).float().mean()),
                                 "clean_fpr": float((clean.nonconformity > t).float().mean())}
    row["roc"] = roc_on_grid(adversarial.nonconformity[wrong], clean.nonconformity)
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


def worst_case(labels: torch.Tensor, sets: Mapping[str, Detection], calibration: Detection,
               fprs: Sequence[float] = (0.01, 0.05)) -> dict[str, Any]:
    """Per image, broken if any attack in `sets` broke it: robustness at the calibrated threshold and SR@FPR, and
    the indices of the broken images (two runs on the same images then compare paired, `evaluation.compare`)."""
    broken = torch.zeros(len(labels), dtype=torch.bool)
    for v in sets.values():
        broken |= evaded(v, labels)
    out: dict[str, Any] = {"attacks": list(sets), "n": len(labels), "robustness": 1 - float(broken.float().mean()),
                           "undetected_success_rate": float(broken.float().mean()), "sr_at_fpr": {},
                           "broken_images": torch.nonzero(broken).flatten().tolist()}  # for paired tests across runs
    for key, t in thresholds_at_fpr(calibration, fprs).items():
        hit = torch.zeros(len(labels), dtype=torch.bool)
        for v in sets.values():
            hit |= (v.predicted != labels) & (v.nonconformity <= t)
        out["sr_at_fpr"][key] = float(hit.float().mean())
    return out
