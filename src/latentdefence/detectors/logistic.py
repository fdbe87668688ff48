"""What Mahalanobis and LID share: one score per layer, combined by a logistic regression trained on
clean, noisy and adversarial *training* images (Ma et al. 2018, arXiv:1801.02613, Section 5; Lee et al. 2018)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from ..attacks.base import Attack, frozen_eval
from ..attacks.pgd import FGSM
from ..data.base import ImageDataset
from ..stats import roc_auc
from ..models import TappedModel
from .base import ConformalDetector, check_classes
from .artifact import load_detector, save_detector


class LogisticCombiner:
    """Standardise per-layer scores, then a logistic regression's logit (higher = adversarial), in torch."""

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> "LogisticCombiner":
        """Fit on features (N, L) float and labels (N,) in {0 normal, 1 adversarial}, by cross-validated C."""
        from sklearn.linear_model import LogisticRegressionCV

        if features.ndim != 2 or labels.shape != features.shape[:1] or not torch.isfinite(features).all():
            raise ValueError(f"need finite features (N, L) and labels (N,), got {tuple(features.shape)}, "
                             f"{tuple(labels.shape)}")
        if len(torch.unique(labels)) != 2:
            raise ValueError("the logistic regression needs both normal and adversarial examples")
        x = features.to(torch.float64)
        self.mean_, self.scale_ = x.mean(0), x.std(0).clamp_min(1e-12)
        folds = max(2, int(min(5, torch.bincount(labels).min().item())))
        with warnings.catch_warnings():  # scikit-learn 1.8+ announces default changes we do not rely on
            warnings.simplefilter("ignore", FutureWarning)
            lr = LogisticRegressionCV(cv=folds, scoring="neg_log_loss", max_iter=1000).fit(
                ((x - self.mean_) / self.scale_).numpy(), labels.numpy())
        self.coef_ = torch.from_numpy(lr.coef_[0]).to(torch.float32)
        self.intercept_ = float(lr.intercept_[0])
        self.mean_, self.scale_ = self.mean_.to(torch.float32), self.scale_.to(torch.float32)
        return self

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """Logit (B,) for features (B, L); differentiable."""
        mean, scale, coef = (t.to(features) for t in (self.mean_, self.scale_, self.coef_))
        return ((features - mean) / scale) @ coef + self.intercept_


def clean_noisy_adversarial(classifier: TappedModel, data: ImageDataset, attack: Attack, seed: int = 0,
                            batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(clean, noisy, adversarial) images (M, C, H, W) each, for the detector's logistic regression.

    As Ma et al.: only images F classifies correctly whose attacked version F misclassifies; the noisy
    twin adds Gaussian noise with the adversarial perturbation's L2 norm (their noise was tuned to match it).
    """
    device = next(classifier.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    keep, adv = [], []
    for i in range(0, len(data), batch_size):
        x, y = data.images[i:i + batch_size].to(device), data.labels[i:i + batch_size].to(device)
        result = attack(classifier, x, y)
        with torch.no_grad(), frozen_eval(classifier):
            right = classifier(x).argmax(1) == y
        keep.append((right & result.success).cpu())
        adv.append(result.images.cpu())
    mask = torch.cat(keep)
    clean, adversarial = data.images[mask], torch.cat(adv)[mask]
    if mask.sum() < 2:
        raise ValueError(f"{type(attack).__name__} fooled F on only {int(mask.sum())} of {len(data)} training images; "
                         "the logistic regression needs more: use a stronger attack or more images")
    size = (adversarial - clean).flatten(1).norm(dim=1)                                   # (M,)
    noise = torch.randn(clean.shape, generator=gen)
    noise = noise * (size / noise.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1)
    return clean, (clean + noise).clamp(0, 1), adversarial


class LayerScoreDetector(ConformalDetector):
    """Per-layer scores of F's activations, combined by a `LogisticCombiner` into the detector's score.

    A subclass sets ``classifier``, ``taps``, ``attack``, ``lr_samples``, ``seed``, ``batch_size``, and
    implements ``_fit_layers(data)`` (its per-layer statistics) and ``_layer_score(tap, activation)``
    (B,), higher = more suspicious, differentiable. The score thresholded is the combiner's logit.
    ``fit`` records ``lr_examples_`` (fooled training images used) and ``lr_train_auc_`` (the regression's
    in-sample ROC AUC, adversarial vs their own clean originals: how much it could learn at all).
    """

    taps: Sequence[str] | None
    attack: Attack | None
    lr_samples: int
    seed: int
    batch_size: int

    per_tap_state: tuple[str, ...] = ()   # fitted attributes holding tap -> tensor, saved with the artifact

    def _fit_layers(self, data: ImageDataset) -> None:
        raise NotImplementedError

    def _layer_score(self, tap: str, activation: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _default_taps(self) -> list[str]:
        return list(self.classifier.tap_names)

    def fit(self, train: ImageDataset) -> "LayerScoreDetector":
        """Per-layer statistics on one part of `train`, the logistic regression on another (seeded split)."""
        self.taps_ = list(self.taps) if self.taps is not None else self._default_taps()
        if not self.taps_:
            raise ValueError(f"{type(self).__name__} needs at least one tap")
        for tap in self.taps_:
            self.classifier.check_tap(tap)
        if not 0 < self.lr_samples < len(train):
            raise ValueError(f"lr_samples must be in 1..{len(train) - 1} (training set size - 1), "
                             f"got {self.lr_samples}")
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.seed))
        self._fit_layers(train.subset(order[self.lr_samples:]))
        attack = self.attack if self.attack is not None else FGSM(eps=0.3)
        parts = clean_noisy_adversarial(self.classifier, train.subset(order[:self.lr_samples]), attack, self.seed,
                                        self.batch_size)
        features = torch.cat([self._scores(p)[1] for p in parts])                      # (3M, L)
        m = len(parts[0])
        labels = torch.cat([torch.zeros(2 * m, dtype=torch.int64), torch.ones(m, dtype=torch.int64)])
        self.combiner_ = LogisticCombiner().fit(features, labels)
        self.lr_examples_ = m
        with torch.no_grad():
            logits = self.combiner_(features)
        self.lr_train_auc_ = roc_auc(logits[2 * m:], logits[:m])  # adversarial vs their clean originals, in-sample
        return self

    def _pass(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F's logits (B, K) and the per-layer scores (B, L), from one differentiable pass (F frozen)."""
        taps = self.taps_
        last = self.classifier.deepest_tap(taps)
        with frozen_eval(self.classifier):
            acts = self.classifier.intermediates(images.to(next(self.classifier.parameters()).device), taps)
            logits = self.classifier.forward_from(acts[last], last)
            return logits, torch.stack([self._layer_score(tap, acts[tap]) for tap in taps], dim=1)

    def _exact_layer_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F's predictions (B,) and the per-layer scores (B, L) the detector thresholds."""
        with torch.no_grad():
            logits, scores = self._pass(images)
        return logits.argmax(1), scores

    def _scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batched `_exact_layer_scores` on CPU."""
        step = self.batch_size
        parts = [self._exact_layer_scores(images[i:i + step]) for i in range(0, len(images), step)]
        return torch.cat([p[0].cpu() for p in parts]), torch.cat([p[1].cpu() for p in parts])

    def nonconformity(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(F's predictions (N,), the logistic regression's logit (N,), per-layer scores) in batches."""
        self._check_fitted("combiner_")
        images = self.check_images(images)
        predicted, scores = self._scores(images)
        with torch.no_grad():
            logit = self.combiner_(scores)
        return predicted, logit, {tap: scores[:, i] for i, tap in enumerate(self.taps_)}

    def surrogate_score(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """The logit (B,) on the differentiable per-layer scores; higher = flagged. `classes` is checked only:
        these scores do not depend on F's class."""
        self._check_fitted("combiner_")
        images = self.check_images(images)
        check_classes(images, classes, self.classifier.num_classes)
        return self.combiner_(self._pass(images)[1])

    def save(self, path: str | Path) -> None:
        """One atomic safetensors file: F's weights, per-layer statistics, the regression, the calibration."""
        self._check_fitted("combiner_")
        state = {f"{attr}{tap}": t for attr in self.per_tap_state for tap, t in getattr(self, attr).items()}
        state.update({f"combiner.{name}": getattr(self.combiner_, name) for name in ("mean_", "scale_", "coef_")})
        save_detector(self, path, state, {"taps": self.taps_, "intercept": self.combiner_.intercept_,
                                          "lr_examples": self.lr_examples_, "lr_train_auc": self.lr_train_auc_})

    @classmethod
    def load(cls, path: str | Path, classifier: TappedModel | None = None) -> "LayerScoreDetector":
        """Rebuild a saved detector; F comes from the registry by name unless `classifier` is given."""
        det, tensors, fitted = load_detector(cls, path, classifier)
        det.taps_ = fitted["taps"]
        for attr in cls.per_tap_state:
            setattr(det, attr, {tap: tensors[f"{attr}{tap}"] for tap in det.taps_})
        det.combiner_ = LogisticCombiner()
        for name in ("mean_", "scale_", "coef_"):
            setattr(det.combiner_, name, tensors[f"combiner.{name}"])
        det.combiner_.intercept_ = fitted["intercept"]
        det.lr_examples_, det.lr_train_auc_ = fitted["lr_examples"], fitted["lr_train_auc"]
        return det
