"""SVHN (cropped digits) from the published `*_32x32.mat` files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
import torch

from .base import DatasetFileError, ImageDataset, Splits
from .cache import cached_uint8, source_key


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 3, 32, 32) uint8, labels (N,) int64 in 0..9) from one SVHN .mat file."""
    try:
        mat = scipy.io.loadmat(str(path), variable_names=["X", "y"])
    except Exception as err:  # scipy raises ValueError, TypeError, MatReadError... for a damaged file
        raise DatasetFileError(f"{path}: not a readable MATLAB file ({type(err).__name__}: {err})") from err
    if "X" not in mat or "y" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetFileError(f"{path}: expected variables X and y, found {found}")
    x, y = mat["X"], mat["y"]
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise DatasetFileError(f"{path}: X is {x.dtype} {x.shape}, expected uint8 (32, 32, 3, N)")
    n = x.shape[3]
    if y.shape not in ((n, 1), (n,)):
        raise DatasetFileError(f"{path}: y has shape {y.shape}, expected ({n}, 1) to match X")
    y = y.reshape(n)
    if n and (not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating)
              or not np.isfinite(y).all() or (y != np.round(y)).any()):
        bad = y[~np.isfinite(y) | (y != np.round(y))][:3] if np.issubdtype(y.dtype, np.floating) else y.dtype
        raise DatasetFileError(f"{path}: labels must be whole numbers 1..10, got {bad} (never rounded or truncated)")
    y = y.astype(np.int64)
    if n and (y.min() < 1 or y.max() > 10):
        raise DatasetFileError(f"{path}: labels span {y.min()}..{y.max()}, expected 1..10 (10 means digit 0)")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    return images, y % 10


def read_svhn_files(paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """Several SVHN .mat files concatenated in order."""
    parts = [read_svhn_mat(p) for p in paths]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def load_svhn_split(paths: list[Path], split: str) -> ImageDataset:
    """One split, decoded once and then read from the converted cache."""
    for path in paths:
        if not path.is_file():
            raise DatasetFileError(f"{path}: missing; download it from http://ufldl.stanford.edu/housenumbers/")
    key = source_key(f"svhn-{split}", paths)
    images, labels = cached_uint8(key, lambda: read_svhn_files(paths))
    return ImageDataset(torch.from_numpy(images).float().div_(255.0), torch.from_numpy(labels.astype(np.int64)),
                        "svhn", split)


def load_svhn(root: Path, extra: bool = False) -> Splits:
    """SVHN's 73,257 train / 26,032 test digits; `extra=True` appends the 531,131 easier extra digits to train."""
    root = Path(root)
    train = [root / "train_32x32.mat"] + ([root / "extra_32x32.mat"] if extra else [])
    return Splits(train=load_svhn_split(train, "train"), test=load_svhn_split([root / "test_32x32.mat"], "test"))
