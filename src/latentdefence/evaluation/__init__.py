"""Metrics, plots and reports shared by every experiment; `evaluate_detector`, the adaptive evaluation of any
detector (`detector_eval.py`)."""

from .attack_plan import PaperAttack, register_paper_attack
from .detector_eval import DetectorEvaluation, evaluate_detector, evaluate_detectors
from .threat import VERSIONS, Budget, ThreatModel
from .metrics import accuracy, batched_predict, robust_accuracy
from .workers import Workers

__all__ = ["Budget", "DetectorEvaluation", "Workers", "PaperAttack", "ThreatModel", "VERSIONS", "accuracy", "batched_predict",
           "evaluate_detector", "evaluate_detectors", "register_paper_attack", "robust_accuracy"]
