"""Balanced pair sampling and the contrastive loss (DLD Eqs. 6-7; Hadsell et al. 2006).

The paper's Eq. 6 weights D^2 by (1 - Y) while its text says Y = 1 flags a same-class pair; taken
literally it would pull different classes together. We implement the intended loss (Hadsell's):
same-class pairs cost 0.5 * D^2, different-class pairs cost 0.5 * max(0, m - D)^2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def balanced_same(group_sizes: Sequence[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Same-class flags (sum(group_sizes),): in each consecutive group, half (rounded up) at random positions.

    DLD's encoder batches are [clean | adversarial]; balancing per group gives adversarial anchors
    same-class partners too, so they are pulled to their true class (Section IV-A's balanced pairs).
    """
    if any(int(n) < 0 for n in group_sizes):
        raise ValueError(f"group sizes must be non-negative, got {list(group_sizes)}")
    flags = []
    for n in group_sizes:
        order = torch.randperm(int(n), generator=generator)
        flags.append(order < (int(n) + 1) // 2)
    return torch.cat(flags) if flags else torch.zeros(0, dtype=torch.bool)


def sample_pairs(labels: torch.Tensor, pool_labels: torch.Tensor, generator: torch.Generator | None = None,
                 same: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Partners in `pool_labels` for each anchor label: a same-class partner where `same`, else another class.

    `same` (B,) bool defaults to `balanced_same([B])`. Returns (partner indices into the pool (B,), same (B,)).
    """
    if labels.ndim != 1 or pool_labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got {tuple(labels.shape)} and {tuple(pool_labels.shape)}")
    classes, counts = torch.unique(pool_labels, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"contrastive pairs need at least two classes in the pool, got {classes.tolist()}")
    anchor_class = torch.searchsorted(classes, labels)
    if (anchor_class >= len(classes)).any() or (classes[anchor_class.clamp_max(len(classes) - 1)] != labels).any():
        raise ValueError("an anchor label is missing from the pool of partners")
    if same is None:
        same = balanced_same([len(labels)], generator)
    elif same.shape != labels.shape or same.dtype != torch.bool:
        raise ValueError(f"same must be bool {tuple(labels.shape)}, got {same.dtype} {tuple(same.shape)}")
    shift = torch.randint(1, len(classes), (len(labels),), generator=generator)
    partner_class = torch.where(same, anchor_class, (anchor_class + shift) % len(classes))
    order = torch.argsort(pool_labels, stable=True)                  # pool indices grouped by class
    offsets = torch.cumsum(counts, 0) - counts
    pick = (torch.rand(len(labels), generator=generator) * counts[partner_class]).long()
    return order[offsets[partner_class] + pick], same


def contrastive_loss(x1: torch.Tensor, x2: torch.Tensor, same: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Mean contrastive loss over pairs (B, d), (B, d) with `same` (B,) bool; margin m = 1 in the paper."""
    if x1.shape != x2.shape or x1.ndim != 2 or same.shape != x1.shape[:1]:
        raise ValueError(f"expected embeddings (B, d), (B, d) and same (B,), got "
                         f"{tuple(x1.shape)}, {tuple(x2.shape)}, {tuple(same.shape)}")
    sq = (x1 - x2).pow(2).sum(dim=1)                                   # D^2, (B,)
    dist = sq.clamp_min(1e-12).sqrt()                                  # finite gradient at D = 0
    pull = 0.5 * sq
    push = 0.5 * torch.relu(margin - dist).pow(2)
    return torch.where(same, pull, push).mean()
