"""A tiny seeded classifier on three-class 8x8 blob images, shared by the detector tests."""

from __future__ import annotations

import torch
from torch import nn

from latentdefence.data.base import ImageDataset
from latentdefence.models import StagedModel


def tiny_model() -> StagedModel:
    """Two small conv taps and a linear head for 1x8x8 inputs, 3 classes."""
    return StagedModel([
        ("layer1", nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))),  # (N, 4, 4, 4)
        ("layer2", nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))),  # (N, 8, 2, 2)
        ("logits", nn.Sequential(nn.Flatten(), nn.Linear(32, 3))),
    ], input_shape=(1, 8, 8), num_classes=3)


def blobs(n: int, seed: int, size: int = 8) -> ImageDataset:
    """Three classes of size x size images: a bright half-size block (top-left, top-right, bottom-middle) plus noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = 0.2 * torch.rand(n, 1, size, size, generator=gen)
    half, quarter = size // 2, size // 4
    for c, (r, col) in enumerate([(0, 0), (0, half), (half, quarter)]):
        images[labels == c, :, r:r + half, col:col + half] += 0.7
    return ImageDataset(images.clamp(0, 1), labels, "blobs", "train")


def trained_tiny_model(train: ImageDataset, steps: int = 60) -> StagedModel:
    """`tiny_model` fitted to `train` by full-batch Adam (seeded), left in eval mode."""
    torch.manual_seed(0)
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.images), train.labels).backward()
        opt.step()
    return model.eval()
