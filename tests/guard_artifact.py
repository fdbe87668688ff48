"""A tiny seeded, calibrated DLD artifact on a registered architecture (so a server process can rebuild it), and
the module-scoped fixtures the serving tests share (import them: `from guard_artifact import artifact, guard`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from latentdefence.data.base import ImageDataset
from latentdefence.dld import DeepLatentDefence, EncoderTrainConfig, train_encoder
from latentdefence.models import create_model
from latentdefence.serving import GuardedClassifier
import toy_blobs

TAPS = ("conv1", "conv2")


def blobs(n: int, seed: int) -> toy_blobs.ImageDataset:
    """The shared three-class blobs at LeNet-5's 28x28."""
    return toy_blobs.blobs(n, seed, size=28)


def build_artifact(path: Path, train: ImageDataset | None = None) -> DeepLatentDefence:
    """LeNet-5 (3 classes) trained for a few steps on `train` (default: 240 blobs), two small encoders, calibrated at
    10% FPR; saved to `path`."""
    torch.manual_seed(0)
    model, train = create_model("lenet5", num_classes=3), train if train is not None else blobs(240, 0)
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


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`build_artifact` once per test module."""
    path = tmp_path_factory.mktemp("guard") / "guard.safetensors"
    build_artifact(path)
    return path


@pytest.fixture(scope="module")
def guard(artifact: Path) -> GuardedClassifier:
    return GuardedClassifier.load(artifact)


@pytest.fixture(scope="module")
def images(guard: GuardedClassifier) -> dict[str, torch.Tensor]:
    """8-bit exact blobs (PNG and UINT8 carry the same pixels as FP32), split by the detector's own verdict."""
    mixed = torch.cat([blobs(40, 3).images, 0.5 * blobs(40, 4).images + 0.5 * blobs(40, 5).images.roll(1, 0)])
    x = (mixed * 255).round() / 255
    flagged = guard.predict(x).is_adversarial
    assert 0 < flagged.sum() < len(x), "the fixture must give both flagged and unflagged inputs"
    return {"clean": x[~flagged], "flagged": x[flagged]}
