"""MNIST from the published IDX files (raw or .gz), in any layout torchvision leaves on disk."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from .base import DatasetFileError, ImageDataset, Splits

IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions (N, H, W)
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension (N,)


def find_idx_file(root: Path, name: str) -> Path:
    """First of `name`, `name.gz` in root, root/MNIST/raw, root/raw (torchvision's layouts)."""
    folders = [root, root / "MNIST" / "raw", root / "raw"]
    for folder in folders:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    searched = ", ".join(str(f) for f in folders)
    raise DatasetFileError(f"{name}: missing; expected {name} or {name}.gz in one of: {searched}")


def read_idx(path: Path, magic: int) -> np.ndarray:
    """A uint8 IDX file as an array, checking its magic number and that its size matches the header."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DatasetFileError(f"{path}: unreadable ({err})") from err
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetFileError(f"{path}: truncated; {len(raw)} bytes, expected at least a {header}-byte header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DatasetFileError(f"{path}: magic number {found:#010x}, expected {magic:#010x}; "
                               "not an IDX file of this kind")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DatasetFileError(f"{path}: {len(raw)} bytes, expected {expected} for dims {dims} "
                               "(truncated or corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_idx_split(root: Path, prefix: str, split: str) -> ImageDataset:
    """One split from `<prefix>-images-idx3-ubyte` and `<prefix>-labels-idx1-ubyte`."""
    image_path = find_idx_file(root, f"{prefix}-images-idx3-ubyte")
    label_path = find_idx_file(root, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(image_path, IMAGE_MAGIC)  # (N, H, W)
    labels = read_idx(label_path, LABEL_MAGIC)  # (N,)
    if images.shape[0] != labels.shape[0]:
        raise DatasetFileError(f"{label_path}: {labels.shape[0]} labels, expected {images.shape[0]} "
                               f"to match {image_path}")
    pixels = torch.from_numpy(images.copy()).unsqueeze(1).float().div_(255.0)  # (N, 1, H, W)
    return ImageDataset(pixels, torch.from_numpy(labels.astype(np.int64)), "mnist-idx", split)


def load_idx_mnist(root: Path) -> Splits:
    """MNIST's 60k/10k train/test splits from IDX files a user already has (e.g. torchvision's download)."""
    root = Path(root)
    return Splits(train=load_idx_split(root, "train", "train"), test=load_idx_split(root, "t10k", "test"))
