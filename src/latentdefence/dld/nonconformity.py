"""Non-conformity (DLD Eq. 8, after Deep k-NN), threshold calibration and conformal credibility."""

from __future__ import annotations

import math

import torch


def nonconformity(neighbour_labels: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """beta_N(x, j): how many of the k neighbours' labels (N, k) differ from F's prediction j (N,)."""
    if neighbour_labels.ndim != 2 or predicted.shape != neighbour_labels.shape[:1]:
        raise ValueError(f"expected neighbour labels (N, k) and predictions (N,), got "
                         f"{tuple(neighbour_labels.shape)} and {tuple(predicted.shape)}")
    return (neighbour_labels != predicted.unsqueeze(1)).sum(dim=1)


def calibrate_threshold(scores: torch.Tensor, target_fpr: float) -> float:
    """Smallest observed score t with fraction(scores > t) <= target_fpr; inputs scoring above t are flagged.

    With integer scores (Eq. 8) ties make the achieved rate at most, not exactly, the target.
    """
    scores = _check_scores(scores, "calibration scores").to(torch.float64)
    if not 0.0 <= target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in [0, 1), got {target_fpr}")
    ordered = torch.sort(scores, descending=True).values
    allowed = math.floor(target_fpr * len(ordered) + 1e-9)           # false positives we may make
    return float(ordered[allowed])


def credibility(scores: torch.Tensor, calibration_scores: torch.Tensor) -> torch.Tensor:
    """Conformal p-value per input: (1 + #{calibration >= score}) / (n + 1); low means suspicious."""
    scores = _check_scores(scores, "scores").to(torch.float64)
    cal = torch.sort(_check_scores(calibration_scores, "calibration scores").to(torch.float64)).values
    at_least = len(cal) - torch.searchsorted(cal, scores, right=False)  # count of cal >= score
    return (1.0 + at_least) / (len(cal) + 1.0)


def _check_scores(scores: torch.Tensor, name: str) -> torch.Tensor:
    if scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor, got shape {tuple(scores.shape)}")
    if scores.is_floating_point() and not torch.isfinite(scores).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return scores.detach().cpu()
