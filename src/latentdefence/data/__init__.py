"""Dataset loaders: every one returns `Splits` of NCHW float32 images in [0, 1] and int64 labels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .base import DatasetFileError, ImageDataset, Splits, calibration_split, default_cache_dir, default_data_dir
from .celeba import load_celeba_smile
from .cifar10 import load_cifar10
from .folder import load_image_folder
from .idx import load_idx_mnist
from .mnist import load_mnist
from .svhn import load_svhn

# Loaders that read files a user downloaded; each takes the folder first.
FILE_LOADERS: dict[str, Callable[..., Splits]] = {
    "mnist-idx": load_idx_mnist,
    "svhn": load_svhn,
    "celeba-smile": load_celeba_smile,
    "cifar10": load_cifar10,
    "folder": load_image_folder,
}
DATASETS: tuple[str, ...] = ("mnist", *FILE_LOADERS)


def load_dataset(name: str, data_dir: Path | None = None, root: Path | None = None, **kw: Any) -> Splits:
    """Load a dataset by name, so configs and the CLI pick one with a string; file datasets read `data_dir` (alias
    `root`), else $LATENTDEFENCE_DATA_DIR."""
    if data_dir is not None and root is not None and Path(data_dir) != Path(root):
        raise ValueError(f"pass data_dir or root, not two different folders ({data_dir} and {root})")
    data_dir = data_dir if data_dir is not None else root
    if name == "mnist":
        if data_dir is not None:
            raise ValueError("mnist loads its embedded copy and takes no data_dir; use 'mnist-idx' to read IDX files")
        return load_mnist(**kw)
    if name not in FILE_LOADERS:
        raise KeyError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    data_dir = data_dir if data_dir is not None else default_data_dir()
    if data_dir is None:
        raise ValueError(f"dataset {name!r} reads downloaded files: pass data_dir (the folder holding them) or set "
                         "LATENTDEFENCE_DATA_DIR")
    return FILE_LOADERS[name](Path(data_dir), **kw)


def load_split(name: str, split: str, data_dir: Path | None = None, channels: int | None = None) -> ImageDataset:
    """One split of a dataset by name (what a detector's citations count rows of); a class-folder dataset is read
    in the mode of `channels` (1: greyscale, else RGB), which its files alone do not fix."""
    kw: dict[str, Any] = {"mode": "L" if channels == 1 else "RGB"} if name == "folder" else {}
    splits = load_dataset(name, data_dir, **kw)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return splits.train if split == "train" else splits.test


__all__ = ["DATASETS", "DatasetFileError", "ImageDataset", "Splits", "calibration_split", "default_cache_dir", "default_data_dir",
           "load_celeba_smile", "load_cifar10", "load_dataset", "load_split", "load_image_folder", "load_idx_mnist", "load_mnist", "load_svhn"]
