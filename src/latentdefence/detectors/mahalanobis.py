"""The Mahalanobis detector (Lee et al. 2018): class-conditional Gaussians with a tied covariance per layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..attacks.base import Attack, frozen_eval
from ..data.base import ImageDataset
from ..models import TappedModel
from .logistic import LayerScoreDetector
from .registry import register_detector


@register_detector("mahalanobis", examples=({"lr_samples": 200},))
class MahalanobisDetector(LayerScoreDetector):
    """Mahalanobis-distance detector (Lee, Lee, Lee & Shin, arXiv:1807.03888, Algorithm 1).

    Per tap, a layer's feature is its channel means (global average pooling, as the paper; a vector tap
    is used as is). ``fit`` estimates class means and one tied covariance from the training labels
    (Eq. 1), on the training images not held out for the logistic regression; a layer's score is the
    squared Mahalanobis distance to the closest class mean (= -M(x) of Eq. 2), optionally after the
    input pre-processing of Eq. 4; the layer scores are combined by a logistic regression trained on
    clean and noisy (negative) vs adversarial (positive) *training* images (as the paper's detection
    experiments, which follow Ma et al.; it never sees evaluation images).

    Args:
        classifier: the classifier F it guards; never modified.
        taps: layers scored (default every tap but the last, i.e. the paper's "end of every block"; not logits).
        noise: input pre-processing magnitude (Eq. 4), per layer, in [0, 1] pixel units. Default 0 (off):
            the paper tunes it per attack on adversarial validation data from {0, 0.0005, 0.001, 0.0014,
            0.002, 0.005, 0.01}, which needs an attack it is tuned for.
        max_train: training images for the Gaussians (seeded subset; None = all not held out).
        attack: makes the logistic regression's positives (default FGSM eps 0.3: the paper's "unseen
            attack" setting trains on FGSM).
        lr_samples: training images held out for the logistic regression (its clean set).
        seed: the split and the noise.
        batch_size: inference batch size.

    Shapes: images (N, C, H, W) in [0, 1]; per-layer scores (N,).
    """

    per_tap_state = ("means_", "precisions_")

    def __init__(self, classifier: TappedModel, taps: Sequence[str] | None = None, *, noise: float = 0.0,
                 max_train: int | None = 20_000, attack: Attack | None = None, lr_samples: int = 2000,
                 seed: int = 0, batch_size: int = 256) -> None:
        self.classifier = classifier
        self.taps = taps
        self.noise = noise
        self.max_train = max_train
        self.attack = attack
        self.lr_samples = lr_samples
        self.seed = seed
        self.batch_size = batch_size

    def _default_taps(self) -> list[str]:
        return list(self.classifier.tap_names[:-1])

    def _fit_layers(self, data: ImageDataset) -> None:
        """Class means (K, C) and the precision (C, C) of the tied covariance, per tap (Eq. 1)."""
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        data = data.head(self.max_train)
        num_classes = self.classifier.num_classes
        if torch.bincount(data.labels, minlength=num_classes).min() < 1:
            raise ValueError(f"every one of the {num_classes} classes needs training images for its Gaussian")
        feats: dict[str, list[torch.Tensor]] = {tap: [] for tap in self.taps_}
        with torch.no_grad(), frozen_eval(self.classifier):
            for i in range(0, len(data), self.batch_size):
                acts = self.classifier.intermediates(data.images[i:i + self.batch_size].to(
                    next(self.classifier.parameters()).device), self.taps_)
                for tap in self.taps_:
                    feats[tap].append(_pool(acts[tap]).cpu().to(torch.float64))
        self.means_: dict[str, torch.Tensor] = {}
        self.precisions_: dict[str, torch.Tensor] = {}
        for tap, chunks in feats.items():
            f = torch.cat(chunks)                                                      # (N, C)
            means = torch.zeros(num_classes, f.shape[1], dtype=torch.float64).index_add_(0, data.labels, f)
            means /= torch.bincount(data.labels, minlength=num_classes).unsqueeze(1)
            centred = f - means[data.labels]
            self.means_[tap] = means.to(torch.float32)
            self.precisions_[tap] = torch.linalg.pinv(centred.T @ centred / len(f), hermitian=True).to(torch.float32)

    def _layer_score(self, tap: str, activation: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distance (B,) to the closest class mean."""
        return self.distances(tap, activation).amin(1)

    def distances(self, tap: str, activation: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distances (B, K) of a tap's activation to every class mean; differentiable."""
        self._check_fitted("means_")
        f = _pool(activation)                                                          # (B, C)
        means, precision = self.means_[tap].to(f), self.precisions_[tap].to(f)
        diff = f.unsqueeze(1) - means                                                  # (B, K, C)
        return torch.einsum("bkc,cd,bkd->bk", diff, precision, diff)

    def _exact_layer_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 4 when noise > 0: each layer is scored at x - noise * sign(grad of its closest-class distance)."""
        predicted, scores = super()._exact_layer_scores(images)
        if self.noise == 0:
            return predicted, scores
        x = images.detach().to(next(self.classifier.parameters()).device).requires_grad_(True)
        per_layer = self._pass(x)[1]                                                   # (B, L)
        out = []
        for i in range(len(self.taps_)):
            grad, = torch.autograd.grad(per_layer[:, i].sum(), x, retain_graph=i + 1 < len(self.taps_))
            with torch.no_grad():
                out.append(self._pass((x - self.noise * grad.sign()).clamp(0, 1))[1][:, i])
        return predicted, torch.stack(out, dim=1)


def _pool(activation: torch.Tensor) -> torch.Tensor:
    """A layer's feature vector (B, C): channel means of a conv map, or the vector itself."""
    return activation.mean(dim=(2, 3)) if activation.ndim == 4 else activation.flatten(1)
