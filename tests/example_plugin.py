"""A user's detector and attack, each in this one file and nowhere else (issue 39's worked example,
docs/detectors.md): importing the file registers both, and every caller sees them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from latentdefence.attacks import InEvaluation, register_attack
from latentdefence.attacks.detector_aware import DetectorAttack, KeepBest
from latentdefence.detectors import ConformalDetector, register_detector
from latentdefence.detectors.artifact import load_detector, save_detector
from latentdefence.models import TappedModel


@register_detector("max-softmax-example")
class MaxSoftmax(ConformalDetector):
    """Flags inputs F is unsure of: the score is 1 - F's top softmax probability."""

    def __init__(self, classifier: TappedModel) -> None:
        self.classifier = classifier

    def fit(self, train: Any) -> "MaxSoftmax":
        return self                                                  # nothing to learn from clean data

    def nonconformity(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            probabilities = self.classifier(self.check_images(images)).softmax(1)
        top = probabilities.max(1)
        score = (1 - top.values).double()
        return top.indices, score, {"softmax": score}

    def surrogate_score(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        return 1 - self.classifier(images).softmax(1).gather(1, classes.view(-1, 1)).squeeze(1)

    def save(self, path: str | Path) -> None:
        save_detector(self, path, {}, {})

    @classmethod
    def load(cls, path: str | Path, classifier: TappedModel | None = None) -> "MaxSoftmax":
        return load_detector(cls, path, classifier)[0]


@register_attack("sign-noise-example", on="detector", targeted=(False,), examples=({"eps": 0.1, "tries": 2},),
                 evaluation=InEvaluation(lambda detector, threat: None if threat.norm == "linf" else "L-inf only",
                                         lambda budget: {"tries": budget.restarts + 1}, order=90, gradient=False))
class SignNoise(DetectorAttack):
    """Random corners of the L-inf ball, the best kept by the detector's own decision: a floor, not a threat."""

    def __init__(self, eps: float, tries: int = 4, *, generator: torch.Generator | None = None) -> None:
        self._store_threat_model(eps, None, tries, "linf", 1, 1, generator)
        self.tries = tries

    def evade(self, detector: Any, images: torch.Tensor, labels: torch.Tensor, best: KeepBest,
              starts: torch.Tensor | None) -> None:
        rows = torch.arange(len(images), device=images.device)
        for _ in range(self.tries):
            noise = torch.rand(images.shape, generator=self.generator).to(images.device) * 2 - 1
            best.update((images + self.eps * noise.sign()).clamp(0, 1), rows)
