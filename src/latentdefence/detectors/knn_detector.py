"""`KNNDetector`: a detector scoring by Eq. 8 (after Deep k-NN) over one k-NN index per tap of F; DLD indexes its
encoders' embeddings, Deep k-NN the raw activations. Generic: it knows indexes and taps, not either paper."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .._io import module_device
from ..attacks.base import frozen_eval
from ..data.base import ImageDataset
from ..validation import check_count, check_images
from .base import ConformalDetector, Detection
from .knn import KNNIndex
from .nonconformity import nonconformity


class KNNDetector(ConformalDetector):
    """A detector scoring by Eq. 8 over one k-NN index per tap of F (DLD; Deep k-NN on raw layers).

    A subclass sets ``classifier``, ``k``, ``knn_backend``, ``knn_algorithm`` and ``batch_size`` and says
    how a tap's activation becomes the embedding its index holds (``_project``).
    """

    k: int
    knn_backend: str
    knn_algorithm: str
    batch_size: int
    index_rows_: dict[str, torch.Tensor]     # tap -> training-set row of each indexed point (`cite`)
    evidence_source_: dict[str, str]         # the training set those rows count: {"dataset", "split"}

    def _project(self, tap: str, activation: torch.Tensor) -> torch.Tensor:
        """The embedding (B, d) of tap `tap`'s activation that its index searches."""
        raise NotImplementedError

    def cite(self, train: ImageDataset, positions: Mapping[str, torch.Tensor]) -> None:
        """Remember which training images each index holds (tap -> rows of `train`'s named split), so a verdict's
        neighbours can be shown as images (the review console); `positions` are rows of `train`, in index order."""
        self.index_rows_ = {tap: train.source_rows()[p] for tap, p in positions.items()}
        self.evidence_source_ = {"dataset": train.name, "split": train.split}

    def max_score(self) -> float | None:
        """Eq. 8's largest value: every one of the k neighbours in every index disagrees with F."""
        return float(self.k * len(self.indexes_)) if hasattr(self, "indexes_") else None

    def _build_indexes(self, data: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        check_count("k", self.k)
        self.indexes_: dict[str, KNNIndex] = {}
        for tap, (z, y) in data.items():
            if len(y) < self.k:
                raise ValueError(f"tap {tap!r}: only {len(y)} training points to index, fewer than k={self.k}")
            index = KNNIndex(self.knn_backend, self.knn_algorithm)
            index.add(z, y)
            self.indexes_[tap] = index

    def nonconformity(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(F's predictions (N,), summed non-conformity (N,), per-tap non-conformity) in batches."""
        logits, score, per_layer, _ = self._score(images)
        return logits.argmax(1), score, per_layer

    def predict(self, images: torch.Tensor) -> Detection:
        """As `ConformalDetector.predict`, plus F's class probabilities from the same forward pass."""
        return self.predict_explained(images)[0]

    def predict_explained(self, images: torch.Tensor) -> tuple[Detection, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """`predict` and `neighbours` from one forward pass and one k-NN search (a server keeping evidence)."""
        self._check_fitted("threshold_")
        logits, score, per_layer, found = self._score(images)
        return self._verdict(logits.argmax(1), score, per_layer, logits.softmax(1)), found

    @torch.no_grad()
    def _score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor],
                                                    dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """(F's logits (N, K), summed non-conformity (N,), per-tap non-conformity, per-tap neighbours) in batches."""
        self._check_fitted("indexes_")
        images = self.check_images(images)
        logits: list[torch.Tensor] = []
        per: dict[str, list[torch.Tensor]] = {tap: [] for tap in self.indexes_}
        found: dict[str, list[torch.Tensor]] = {tap: [] for tap in self.indexes_}
        for i in range(0, len(images), self.batch_size):
            out, latents = self._forward(images[i:i + self.batch_size])
            logits.append(out)
            for tap, z in latents.items():
                idx = self.indexes_[tap].search(z, self.k)[1]
                found[tap].append(idx)
                per[tap].append(nonconformity(self.indexes_[tap].labels[idx], out.argmax(1)))
        per_layer = {tap: torch.cat(v) for tap, v in per.items()}
        neighbours = {tap: (idx, self.indexes_[tap].labels[idx]) for tap, idx in
                      ((tap, torch.cat(parts)) for tap, parts in found.items())}
        return torch.cat(logits), torch.stack(list(per_layer.values())).sum(0), per_layer, neighbours

    @torch.no_grad()
    def neighbours(self, images: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per tap, (positions (N, k) in its index, labels (N, k)) of each image's k nearest indexed training
        points, nearest first: the multiset behind its score (Eq. 8). Positions count the pruned training set."""
        self._check_fitted("indexes_")
        check_images(images)
        found: dict[str, list[torch.Tensor]] = {tap: [] for tap in self.indexes_}
        for i in range(0, len(images), self.batch_size):
            for tap, z in self._forward(images[i:i + self.batch_size])[1].items():
                found[tap].append(self.indexes_[tap].search(z, self.k)[1])
        return {tap: (idx, self.indexes_[tap].labels[idx]) for tap, idx in
                ((tap, torch.cat(parts)) for tap, parts in found.items())}

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """F's predictions (B,) and each tap's embedding (B, d) on CPU, from one pass through F."""
        logits, latents = self._forward(images)
        return logits.argmax(1), latents

    @torch.no_grad()
    def _forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """F's logits (B, K) and each tap's embedding (B, d), on CPU, from one pass through F."""
        self._check_fitted("indexes_")
        taps = list(self.indexes_)
        last = self.classifier.deepest_tap(taps)
        with frozen_eval(self.classifier):
            acts = self.classifier.intermediates(images.to(module_device(self.classifier)), taps)
            logits = self.classifier.forward_from(acts[last], last)
            latents = {tap: self._project(tap, acts[tap]).cpu() for tap in taps}
        return logits.cpu(), latents

    def latents(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Differentiable w.r.t. images: tap -> embedding (B, d) its index searches (what attacks steer)."""
        self._check_fitted("indexes_")
        images = self.check_images(images)
        return self._latents(images, list(self.indexes_))

    def _latents(self, images: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        with frozen_eval(self.classifier):
            acts = self.classifier.intermediates(images.to(module_device(self.classifier)), taps)
            return {tap: self._project(tap, acts[tap]) for tap in taps}

    def centroids(self) -> dict[str, torch.Tensor]:
        """Per tap, the class centroids (K, d) of the indexed training embeddings (Eq. 10's targets)."""
        self._check_fitted("indexes_")
        k = self.classifier.num_classes
        out = {}
        for tap, index in self.indexes_.items():
            sums = torch.zeros(k, index.embeddings.shape[1]).index_add_(0, index.labels, index.embeddings)
            counts = torch.bincount(index.labels, minlength=k).clamp_min(1).unsqueeze(1)
            out[tap] = sums / counts
        return out
