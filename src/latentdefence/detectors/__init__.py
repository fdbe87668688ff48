"""Detectors: the contract every detector shares (`base.py`: `ConformalDetector`, `Detection`, `Detector`), the
detector registry (`create_detector`, `list_detectors`, `register_detector`), the generic k-NN machinery
(`knn.py`, `nonconformity.py`, `knn_detector.py`: Eq. 8 over one index per tap) and the baselines on F's layers.

Deep k-NN (Papernot & McDaniel 2018), Mahalanobis (Lee et al. 2018) and LID (Ma et al. 2018): each is
fit on training images, calibrated on held-out clean images, and has a differentiable
``surrogate_score(images, classes)`` for attacks that know it. DLD (`latentdefence.dld`) builds on `KNNDetector`.
"""

from .base import ConformalDetector, Detection, Detector, Evaluable, Verdict, calibrate_threshold, credibility, evaded
from .dknn import DeepKNN
from .knn import KNNIndex
from .knn_detector import KNNDetector
from .lid import LIDDetector
from .logistic import LayerScoreDetector, LogisticCombiner, clean_noisy_adversarial
from .mahalanobis import MahalanobisDetector
from .nonconformity import nonconformity, soft_nonconformity
from .registry import DetectorEntry, create_detector, detector_entry, list_detectors, load_artifact, register_detector

__all__ = ["ConformalDetector", "DeepKNN", "Detection", "Detector", "DetectorEntry", "Evaluable", "KNNDetector", "KNNIndex",
           "LIDDetector", "LayerScoreDetector", "LogisticCombiner", "MahalanobisDetector", "Verdict",
           "calibrate_threshold", "clean_noisy_adversarial", "create_detector", "credibility", "detector_entry",
           "evaded", "list_detectors", "load_artifact", "nonconformity", "register_detector", "soft_nonconformity"]
