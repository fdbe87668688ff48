"""Detectors: the contract every detector shares (`base.py`: `ConformalDetector`, `Detection`, `Detector`), the
detector registry (`create_detector`, `list_detectors`, `register_detector`) and the baselines on F's layers.

Deep k-NN (Papernot & McDaniel 2018), Mahalanobis (Lee et al. 2018) and LID (Ma et al. 2018): each is
fit on training images, calibrated on held-out clean images, and has a differentiable
``surrogate_score(images, classes)`` for attacks that know it. The baselines are imported on first use (they
need the attacks and DLD, which need the contract here).
"""

from importlib import import_module
from typing import Any

from .base import ConformalDetector, Detection, Detector, Verdict, calibrate_threshold, credibility, evaded
from .registry import DetectorEntry, create_detector, detector_entry, list_detectors, register_detector

_LAZY = {"DeepKNN": "dknn", "LIDDetector": "lid", "LayerScoreDetector": "logistic", "LogisticCombiner": "logistic",
         "MahalanobisDetector": "mahalanobis", "clean_noisy_adversarial": "logistic"}

__all__ = ["ConformalDetector", "Detection", "Detector", "DetectorEntry", "Verdict", "calibrate_threshold", "create_detector",
           "credibility", "detector_entry", "evaded", "list_detectors", "register_detector", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
