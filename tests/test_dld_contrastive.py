"""Pair sampling balance and the contrastive loss on hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from latentdefence.dld import contrastive_loss, sample_pairs


def test_pairs_are_balanced_and_have_the_flagged_relation() -> None:
    gen = torch.Generator().manual_seed(0)
    pool = torch.arange(10).repeat(20)                       # 10 classes x 20 points
    anchors = torch.randint(0, 10, (101,), generator=gen)
    partner, same = sample_pairs(anchors, pool, gen)
    assert int(same.sum()) == 51 and int((~same).sum()) == 50
    assert torch.equal(pool[partner[same]], anchors[same])
    assert (pool[partner[~same]] != anchors[~same]).all()


def test_different_class_partners_cover_every_other_class() -> None:
    gen = torch.Generator().manual_seed(1)
    pool = torch.tensor([0, 1, 2, 3] * 5)
    partner, same = sample_pairs(torch.zeros(4000, dtype=torch.long), pool, gen)
    counts = torch.bincount(pool[partner[~same]], minlength=4)
    assert counts[0] == 0 and (counts[1:] > 600).all()


def test_pairs_reject_a_single_class_pool_and_unknown_anchor() -> None:
    with pytest.raises(ValueError, match="two classes"):
        sample_pairs(torch.zeros(4, dtype=torch.long), torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="missing"):
        sample_pairs(torch.tensor([5]), torch.tensor([0, 1]))


def test_loss_same_class_pulls_by_half_squared_distance() -> None:
    x1, x2 = torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]])  # D = 5
    assert contrastive_loss(x1, x2, torch.tensor([True])).item() == pytest.approx(12.5)


def test_loss_different_class_hinges_at_the_margin() -> None:
    x1 = torch.zeros(3, 1)
    x2 = torch.tensor([[0.25], [1.0], [2.0]])               # D = 0.25, 1, 2 with m = 1
    losses = [contrastive_loss(x1[i:i + 1], x2[i:i + 1], torch.tensor([False])).item() for i in range(3)]
    assert losses == pytest.approx([0.5 * 0.75**2, 0.0, 0.0])
    mean = contrastive_loss(x1, x2, torch.tensor([False, False, False])).item()
    assert mean == pytest.approx(0.5 * 0.75**2 / 3)


def test_loss_has_finite_gradients_at_zero_distance() -> None:
    x1 = torch.zeros(2, 3, requires_grad=True)
    loss = contrastive_loss(x1, torch.zeros(2, 3), torch.tensor([True, False]), margin=2.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.5 * 4 / 2)
    assert torch.isfinite(x1.grad).all() and not math.isnan(loss.item())


def test_loss_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="embeddings"):
        contrastive_loss(torch.zeros(2, 3), torch.zeros(2, 4), torch.tensor([True, False]))
