"""The one in-memory dataset type every loader returns."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..validation import check_count


@dataclass(frozen=True)
class ImageDataset:
    """Images (N, C, H, W) float32 in [0, 1] with integer labels (N,) int64."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str = ""
    split: str = ""
    rows: torch.Tensor | None = None    # each row's position in the named split (None: 0..N-1): evidence references

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise ValueError(f"{self.name}: images must be (N, C, H, W), got shape {tuple(self.images.shape)}")
        if self.labels.ndim != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"{self.name}: labels must be (N,) with N={self.images.shape[0]}, "
                             f"got shape {tuple(self.labels.shape)}")
        if self.images.dtype != torch.float32:
            raise TypeError(f"{self.name}: images must be float32, got {self.images.dtype}")
        if self.labels.dtype != torch.int64:
            raise TypeError(f"{self.name}: labels must be int64, got {self.labels.dtype}")
        if self.rows is not None and (self.rows.dtype != torch.int64 or self.rows.shape != self.labels.shape):
            raise ValueError(f"{self.name}: rows must be int64 (N,) with N={len(self.labels)}, "
                             f"got {self.rows.dtype} {tuple(self.rows.shape)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.labels.max().item()) + 1 if len(self) else 0

    def subset(self, index: torch.Tensor | slice) -> "ImageDataset":
        """A view on some rows, e.g. the calibration split or a documented evaluation subset; it remembers where
        its rows sit in the named split."""
        return ImageDataset(self.images[index], self.labels[index], self.name, self.split, self.source_rows()[index])

    def source_rows(self) -> torch.Tensor:
        """Each row's position (N,) int64 in the split `name`/`split` names, so a detector can cite training images."""
        return self.rows if self.rows is not None else torch.arange(len(self))

    def head(self, n: int | None) -> "ImageDataset":
        """The first n rows (all when n is None); a negative n is an error, not a Python slice from the end."""
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"n must be None or an integer >= 0 (rows from the start), got {n!r}")
        return self if n is None else self.subset(slice(0, n))


def calibration_split(test: ImageDataset, n_calibration: int = 750, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """(calibration, evaluation): a seeded random n_calibration of the test set, never evaluated on, and the rest."""
    check_count("n_calibration", n_calibration)   # a negative count would be a Python slice from the end
    if len(test) <= n_calibration:
        raise ValueError(f"test split has {len(test)} images; need more than n_calibration={n_calibration}")
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(seed))
    return test.subset(order[:n_calibration]), test.subset(order[n_calibration:])


@dataclass(frozen=True)
class Splits:
    """A dataset's documented train and test splits, with where they came from (format, source files' sha256,
    caveats such as a lossy copy) for results.json."""

    train: ImageDataset
    test: ImageDataset
    provenance: dict[str, Any] = field(default_factory=dict)


def default_cache_dir() -> Path:
    """Where converted datasets and downloaded wheels are cached ($LATENTDEFENCE_CACHE or ~/.cache)."""
    root = os.environ.get("LATENTDEFENCE_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "latentdefence"


def default_data_dir() -> Path | None:
    """Where downloaded datasets live when no folder is passed: $LATENTDEFENCE_DATA_DIR, read when called."""
    root = os.environ.get("LATENTDEFENCE_DATA_DIR")
    return Path(root) if root else None


class DatasetFileError(ValueError):
    """A dataset file is missing, truncated, corrupt or fails its checksum."""
