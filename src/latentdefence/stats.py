"""Statistics every layer of the project reports with: binomial and ROC-AUC intervals, ROC AUC itself. No package
imports: detectors, evaluation and experiments all stand on it."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import roc_auc_score


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial rate (95% by default), sound near 0 and 1."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def roc_auc(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> float:
    """ROC AUC (scikit-learn); NaN when either class is empty (e.g. no misclassified examples)."""
    if len(positive_scores) == 0 or len(negative_scores) == 0:
        return float("nan")
    y, s = scores_with_labels(positive_scores, negative_scores)
    return float(roc_auc_score(y, s))


def auc_interval(auc: float, n_positive: int, n_negative: int, z: float = 1.96) -> tuple[float, float]:
    """Hanley & McNeil's (1982) 95% interval for a ROC AUC from its positive and negative counts."""
    if not np.isfinite(auc) or n_positive == 0 or n_negative == 0:
        return (float("nan"), float("nan"))
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_positive - 1) * (q1 - auc * auc) + (n_negative - 1) * (q2 - auc * auc)) / (
        n_positive * n_negative)
    half = z * float(np.sqrt(max(var, 0.0)))
    return (max(0.0, auc - half), min(1.0, auc + half))


def scores_with_labels(pos: torch.Tensor, neg: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(labels: 1 positive, 0 negative; scores as float64) for scikit-learn's ROC functions."""
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    s = torch.cat([pos.to(torch.float64), neg.to(torch.float64)]).numpy()
    return y, s
