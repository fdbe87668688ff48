"""Deep k-NN on F's raw layers (Papernot & McDaniel 2018), the k-NN detector DLD builds on."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..data.base import ImageDataset
from .knn_detector import KNNDetector
from .nonconformity import soft_nonconformity
from ..models import TappedModel
from .base import check_classes
from .artifact import load_detector, save_detector
from .registry import register_detector


@register_detector("dknn", examples=({"taps": ("layer1", "layer2"), "k": 10, "max_train": 300},))
class DeepKNN(KNNDetector):
    """Deep k-NN (Papernot & McDaniel, arXiv:1803.04765) as a detector guarding F.

    One exact k-NN index per tap over the flattened activations of (a seeded subset of) the training set;
    non-conformity = number of the k neighbours, summed over taps, whose label differs from F's class
    (the paper's alpha(x, j) with j = F's prediction, DLD's Eq. 8 without encoders); threshold and
    credibility calibrated on held-out clean images as DLD does.

    Args:
        classifier: the classifier F it guards; never modified.
        taps: layers indexed (default DLD's MNIST taps, so both search the same layers of the same F).
        k: neighbours per layer (paper: 75).
        max_train: training images indexed (a seeded random subset; None = all). Raw layers are big:
            10,000 images of `dld_mnist` layers 1-3 take 420 MB of float32 (x2 with scikit-learn's copy).
        seed: picks the subset.
        surrogate_temperature, surrogate_candidates: `soft_nonconformity` settings for `surrogate_score`.
        knn_backend, knn_algorithm: see `KNNIndex` (exact search by default; the paper used LSH).
        batch_size: inference batch size.

    Shapes: images (N, C, H, W) in [0, 1]; `latents` gives tap -> (B, C*H*W).
    """

    def __init__(self, classifier: TappedModel, taps: Sequence[str] = ("layer1", "layer2", "layer3"), *,
                 k: int = 75, max_train: int | None = 10_000, seed: int = 0, surrogate_temperature: float = 0.1,
                 surrogate_candidates: int | None = None, knn_backend: str = "sklearn",
                 knn_algorithm: str = "brute", batch_size: int = 256) -> None:
        self.classifier = classifier
        self.taps = taps
        self.k = k
        self.max_train = max_train
        self.seed = seed
        self.surrogate_temperature = surrogate_temperature
        self.surrogate_candidates = surrogate_candidates
        self.knn_backend = knn_backend
        self.knn_algorithm = knn_algorithm
        self.batch_size = batch_size

    def fit(self, train: ImageDataset) -> "DeepKNN":
        """Index the flattened activations of up to `max_train` training images per tap, with their labels."""
        taps = list(self.taps)
        if not taps:
            raise ValueError("DeepKNN needs at least one tap")
        for tap in taps:
            self.classifier.check_tap(tap)
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed))
        subset = train.subset(order[:self.max_train] if self.max_train is not None else order)
        chunks: dict[str, list[torch.Tensor]] = {tap: [] for tap in taps}
        with torch.no_grad():
            for i in range(0, len(subset), self.batch_size):
                for tap, z in self._latents(subset.images[i:i + self.batch_size], taps).items():
                    chunks[tap].append(z.cpu())
        self._build_indexes({tap: (torch.cat(c), subset.labels) for tap, c in chunks.items()})
        return self

    def _project(self, tap: str, activation: torch.Tensor) -> torch.Tensor:
        return activation.flatten(1)                                          # (B, C*H*W)

    def surrogate_score(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Soft non-conformity (B,) summed over taps if F predicted `classes`; differentiable, higher = flagged."""
        latents = self.latents(images)
        check_classes(images, classes, self.classifier.num_classes)
        classes = classes.to(next(iter(latents.values())).device)
        return torch.stack([soft_nonconformity(z, self.indexes_[tap], classes, self.k, self.surrogate_temperature,
                                               self.surrogate_candidates) for tap, z in latents.items()]).sum(0)

    def save(self, path: str | Path) -> None:
        """One atomic safetensors file: F's weights, each tap's indexed activations and labels, the calibration."""
        self._check_fitted("indexes_")
        state = {f"index.{tap}.{part}": getattr(index, part) for tap, index in self.indexes_.items()
                 for part in ("embeddings", "labels")}
        save_detector(self, path, state, {"taps": list(self.indexes_)})

    @classmethod
    def load(cls, path: str | Path, classifier: TappedModel | None = None) -> "DeepKNN":
        """Rebuild a saved detector; F comes from the registry by name unless `classifier` is given."""
        det, tensors, fitted = load_detector(cls, path, classifier)
        det._build_indexes({tap: (tensors[f"index.{tap}.embeddings"], tensors[f"index.{tap}.labels"])
                            for tap in fitted["taps"]})
        return det
