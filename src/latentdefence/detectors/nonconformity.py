"""Non-conformity (DLD Eq. 8, after Deep k-NN): the exact vote and its differentiable surrogate."""

from __future__ import annotations

import torch

from .knn import KNNIndex

__all__ = ["nonconformity", "soft_nonconformity"]


def nonconformity(neighbour_labels: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """beta_N(x, j): how many of the k neighbours' labels (N, k) differ from F's prediction j (N,)."""
    if neighbour_labels.ndim != 2 or predicted.shape != neighbour_labels.shape[:1]:
        raise ValueError(f"expected neighbour labels (N, k) and predictions (N,), got "
                         f"{tuple(neighbour_labels.shape)} and {tuple(predicted.shape)}")
    return (neighbour_labels != predicted.unsqueeze(1)).sum(dim=1)


def soft_nonconformity(latents: torch.Tensor, index: KNNIndex, classes: torch.Tensor, k: int,
                       temperature: float = 0.1, candidates: int | None = None) -> torch.Tensor:
    """Differentiable stand-in (B,) for Eq. 8 on `index`: the neighbour vote with soft membership.

    Candidates per query: its `candidates` (default 2k) nearest stored points whose label differs from
    its class, and the `candidates` nearest of its class (so a query surrounded by other classes still
    gets a pull toward its class). Each is weighted by sigmoid((tau - d) / (temperature * tau)), tau =
    the midpoint of the query's current k-th and (k+1)-th neighbour distances (fixed for the step, as in
    Sitawarin & Wagner's soft k-NN attack); the score is k * (weighted share of candidates whose label
    differs). As temperature -> 0 it is exactly Eq. 8. Distances to all N stored points come from one
    (B, d) x (d, N) product, cheaper in time and memory than gathering B * candidates points of a wide layer.
    """
    if latents.ndim != 2 or classes.shape != latents.shape[:1]:
        raise ValueError(f"expected latents (B, d) and classes (B,), got {tuple(latents.shape)} and "
                         f"{tuple(classes.shape)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    m = min(len(index), max(candidates or 2 * k, k + 1))
    points, labels = index.embeddings.to(latents), index.labels.to(latents.device)
    squared = latents.pow(2).sum(1, keepdim=True) + points.pow(2).sum(1) - 2 * latents @ points.T  # (B, N)
    dist = squared.clamp_min(1e-12).sqrt()
    with torch.no_grad():
        near_dist = dist.topk(m, dim=1, largest=False).values                      # (B, m) ascending
        tau = ((near_dist[:, k - 1] + near_dist[:, min(k, m - 1)]) / 2).clamp_min(1e-12)  # (B,)
        own = labels[None, :] == classes[:, None]                                  # (B, N)
        # the m nearest of other classes, even when none is among the m nearest overall (a pure neighbourhood:
        # the score is then small but its gradient still points away from them), and the m nearest of the class
        other_dist, other = dist.masked_fill(own, float("inf")).topk(m, dim=1, largest=False)  # (B, m)
        own_dist, same = dist.masked_fill(~own, float("inf")).topk(m, dim=1, largest=False)     # (B, m)
        idx = torch.cat([other, same], 1)                                          # (B, 2m)
        usable = torch.cat([torch.isfinite(other_dist), torch.isfinite(own_dist)], 1).to(latents)
        differ = torch.cat([torch.ones_like(other_dist), torch.zeros_like(own_dist)], 1).to(latents)
    weight = usable * torch.sigmoid((tau[:, None] - dist.gather(1, idx)) / (temperature * tau[:, None]))
    return k * (weight * differ).sum(1) / weight.sum(1).clamp_min(1e-12)
