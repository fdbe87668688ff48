"""A tiny seeded, calibrated DLD artifact on a registered architecture (so a server process can rebuild it)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from latentdefence.data.base import ImageDataset
from latentdefence.dld import DeepLatentDefence, EncoderTrainConfig, train_encoder
from latentdefence.models import create_model

TAPS = ("conv1", "conv2")


def blobs(n: int, seed: int) -> ImageDataset:
    """Three classes of 28x28 images: a bright 14x14 block (top-left, top-right, bottom-middle) plus noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = 0.2 * torch.rand(n, 1, 28, 28, generator=gen)
    for c, (r, col) in enumerate([(0, 0), (0, 14), (14, 7)]):
        images[labels == c, :, r:r + 14, col:col + 14] += 0.7
    return ImageDataset(images.clamp(0, 1), labels, "blobs", "train")


def build_artifact(path: Path) -> DeepLatentDefence:
    """LeNet-5 (3 classes) trained for a few steps, two small encoders, calibrated at 10% FPR; saved to `path`."""
    torch.manual_seed(0)
    model, train = create_model("lenet5", num_classes=3), blobs(240, 0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(10):
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.images), train.labels).backward()
        opt.step()
    model.eval()
    cfg = EncoderTrainConfig(epochs=4, batch_size=40, lr=0.01, adversarial=False, width=4)
    encoders = {tap: train_encoder(model, tap, train, latent_dim=3, config=cfg) for tap in TAPS}
    det = DeepLatentDefence(model, TAPS, k=5, latent_dim=3, encoders=encoders, batch_size=64)
    det.fit(train).calibrate(blobs(150, 1), target_fpr=0.1)
    det.save(path, metadata={"dataset": "blobs (synthetic, 3 classes)", "threat_model": {"norm": "linf", "eps": 0.3}})
    return det
