"""Baseline detectors on F's layers, with DLD's contract (`latentdefence.dld.ConformalDetector`).

Deep k-NN (Papernot & McDaniel 2018), Mahalanobis (Lee et al. 2018) and LID (Ma et al. 2018): each is
fit on training images, calibrated on held-out clean images, and has a differentiable
``surrogate_score(images, classes)`` for attacks that know it.
"""

from .dknn import DeepKNN
from .lid import LIDDetector
from .logistic import LayerScoreDetector, LogisticCombiner, clean_noisy_adversarial
from .mahalanobis import MahalanobisDetector

__all__ = ["DeepKNN", "LIDDetector", "LayerScoreDetector", "LogisticCombiner", "MahalanobisDetector",
           "clean_noisy_adversarial"]
