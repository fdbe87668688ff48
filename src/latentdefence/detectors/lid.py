"""The LID detector (Ma et al. 2018): local intrinsic dimensionality of F's activations per layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..attacks.base import Attack, frozen_eval
from ..data.base import ImageDataset
from ..models import TappedModel
from .logistic import LayerScoreDetector
from .registry import register_detector


@register_detector("lid", examples=({"k": 10, "reference_size": 60, "lr_samples": 200},))
class LIDDetector(LayerScoreDetector):
    """Local Intrinsic Dimensionality detector (Ma et al., arXiv:1801.02613, Algorithm 1).

    Per tap, the maximum-likelihood LID estimate (Eq. 4) of an input's flattened activation from its k
    nearest neighbours among the activations of a *fixed* reference batch of clean training images; the
    per-layer LIDs are combined by a logistic regression trained on clean and noisy (negative) vs
    adversarial (positive) training images. The paper draws the reference from each minibatch, so a test
    input's score there depends on the other inputs it is batched with; a fixed batch makes the detector
    a function of one input (the same reference serves fitting, scoring and `surrogate_score`).

    Args:
        classifier: the classifier F it guards; never modified.
        taps: layers scored (default every tap, logits included, as the paper's "every layer").
        k: neighbours in the MLE (paper, MNIST: 20).
        reference_size: clean training images in the reference batch (paper: minibatch 100).
        attack: makes the logistic regression's positives (default FGSM eps 0.3; the paper trains one
            detector per attack).
        lr_samples: training images held out for the logistic regression (disjoint from the reference).
        seed: the split and the noise.
        batch_size: inference batch size.

    Shapes: images (N, C, H, W) in [0, 1]; per-layer LIDs (N,).
    """

    per_tap_state = ("reference_",)

    def __init__(self, classifier: TappedModel, taps: Sequence[str] | None = None, *, k: int = 20,
                 reference_size: int = 100, attack: Attack | None = None, lr_samples: int = 2000, seed: int = 0,
                 batch_size: int = 256) -> None:
        self.classifier = classifier
        self.taps = taps
        self.k = k
        self.reference_size = reference_size
        self.attack = attack
        self.lr_samples = lr_samples
        self.seed = seed
        self.batch_size = batch_size

    def _fit_layers(self, data: ImageDataset) -> None:
        """Keep the flattened activations (R, d) of `reference_size` clean training images per tap."""
        if not 1 <= self.k < self.reference_size <= len(data):
            raise ValueError(f"need 1 <= k < reference_size <= {len(data)} training images not held out; "
                             f"got k={self.k}, reference_size={self.reference_size}")
        with torch.no_grad(), frozen_eval(self.classifier):
            acts = self.classifier.intermediates(data.images[:self.reference_size].to(
                next(self.classifier.parameters()).device), self.taps_)
        self.reference_ = {tap: a.flatten(1).cpu() for tap, a in acts.items()}

    def _layer_score(self, tap: str, activation: torch.Tensor) -> torch.Tensor:
        """MLE LID (B,): -k / sum_i log(r_i / r_k) over the k nearest reference activations."""
        z = activation.flatten(1)                                                      # (B, d)
        ref = self.reference_[tap].to(z)                                               # (R, d)
        squared = z.pow(2).sum(1, keepdim=True) + ref.pow(2).sum(1) - 2 * z @ ref.T   # (B, R)
        r = squared.clamp_min(1e-12).sqrt().topk(self.k, dim=1, largest=False).values  # (B, k) ascending
        return -self.k / torch.log(r / r[:, -1:]).sum(1).clamp_max(-1e-6)
