"""LAD fine-tuning: the Eq. 4 mix, the fine-tuned copy, and a split whose parts never overlap."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from latentdefence.data.base import ImageDataset
from latentdefence.lad.finetune import FinetuneConfig, LadSplit, eq4_loss, finetune, make_split


class Logits(nn.Module):
    """A 'model' whose logits are its input, so losses can be worked out by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def test_eq4_mix_matches_hand_value() -> None:
    clean_x, clean_y = torch.zeros(1, 2), torch.tensor([0])              # CE = ln 2
    adv_x, adv_y = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([0])  # CE = ln 4
    loss = eq4_loss(Logits(), clean_x, clean_y, adv_x, adv_y, alpha=0.5)
    assert loss.item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(4))
    assert eq4_loss(Logits(), clean_x, clean_y, adv_x, adv_y, alpha=1.0).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="alpha"):
        eq4_loss(Logits(), clean_x, clean_y, adv_x, adv_y, alpha=1.5)


def test_finetune_returns_a_trained_copy() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    before = [p.clone() for p in model.parameters()]
    clean = ImageDataset(torch.rand(16, 1, 2, 2), torch.arange(16) % 2)
    adv = ImageDataset(torch.rand(8, 1, 2, 2), torch.arange(8) % 2)
    tuned = finetune(model, clean, adv, FinetuneConfig(epochs=2, batch_size=4, lr=0.1))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before, tuned.parameters()))
    with pytest.raises(ValueError, match="differ in shape"):
        finetune(model, clean, ImageDataset(torch.rand(2, 1, 3, 3), torch.zeros(2, dtype=torch.long)),
                 FinetuneConfig(epochs=1))


@settings(max_examples=25, deadline=None)
@given(per_class=st.tuples(st.integers(1, 4), st.integers(0, 4), st.integers(0, 3)), seed=st.integers(0, 1000))
def test_split_parts_never_overlap(per_class: tuple[int, int, int], seed: int) -> None:
    labels = torch.arange(200) % 10
    split = make_split(labels, boundary_per_class=per_class[0], generation_per_class=per_class[1],
                       small_per_class=per_class[2], seed=seed)
    parts = split.as_dict()
    seen = torch.cat(list(parts.values()))
    assert seen.unique().numel() == seen.numel() == 200
    for name, per in zip(("boundary", "generation", "small"), per_class):
        assert torch.bincount(labels[parts[name]], minlength=10).tolist() == [per] * 10


def test_overlapping_split_is_rejected() -> None:
    with pytest.raises(ValueError, match="'boundary' and 'evaluation' share 1"):
        LadSplit(torch.tensor([1, 2]), torch.tensor([3]), torch.tensor([4]), torch.tensor([2, 5]))


def test_split_needs_enough_images() -> None:
    with pytest.raises(ValueError, match="class 0 has 2 images left, 3 requested"):
        make_split(torch.zeros(2, dtype=torch.long), boundary_per_class=3, generation_per_class=0,
                   small_per_class=0, seed=0)
