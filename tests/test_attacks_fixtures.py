"""Shared fixtures for the attack tests: a tiny seeded CNN trained ~1 s on a learnable synthetic task.

Other attack test files import `tiny_model` / `tiny_batch` from here (pytest puts tests/ on sys.path);
the model is trained once per session (functools.cache).
"""

from __future__ import annotations

import functools

from collections.abc import Iterator

import pytest
import torch
from torch import nn

@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread per test: on this shared 2-core machine, two threads under load ran 20-50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


SIZE = 12       # images are (1, SIZE, SIZE)
CLASSES = 10


def make_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),      # (N, 8, 6, 6)
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),     # (N, 16, 3, 3)
        nn.Flatten(), nn.Linear(16 * 9, CLASSES),
    )


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten fixed smooth random prototypes plus noise, in [0, 1]; a fixed, learnable task."""
    proto_gen = torch.Generator().manual_seed(1234)
    protos = torch.rand(CLASSES, 1, SIZE // 3, SIZE // 3, generator=proto_gen)
    protos = nn.functional.interpolate(protos, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    images = protos[labels] + 0.25 * torch.randn(n, 1, SIZE, SIZE, generator=gen)
    return images.clamp(0, 1), labels


@functools.cache
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    torch.set_grad_enabled(True)
    model = make_net()
    x, y = synthetic(1024, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(5):
        for i in range(0, len(x), 128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[i:i + 128]), y[i:i + 128]).backward()
            opt.step()
    return model.eval()


def tiny_batch(n: int = 64, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed batch the tiny model classifies correctly (misclassified samples are dropped)."""
    x, y = synthetic(2 * n, seed=seed)
    model = tiny_model()
    with torch.no_grad():
        ok = model(x).argmax(1) == y
    return x[ok][:n], y[ok][:n]


def targets_for(labels: torch.Tensor) -> torch.Tensor:
    return (labels + 1) % CLASSES


def test_tiny_model_learns() -> None:
    x, y = synthetic(512, seed=3)
    with torch.no_grad():
        acc = (tiny_model()(x).argmax(1) == y).float().mean().item()
    assert acc > 0.9
