"""Metrics, plots and reports shared by every experiment; `evaluate_detector`, the adaptive evaluation of any
detector (`detector_eval.py`, imported on first use: it needs the attacks and DLD, which need this package)."""

from typing import Any

from .metrics import accuracy, batched_predict, robust_accuracy, wilson_interval

_LAZY = ("Budget", "DetectorEvaluation", "ThreatModel", "VERSIONS", "evaluate_detector", "evaluate_detectors")

__all__ = ["accuracy", "batched_predict", "robust_accuracy", "wilson_interval", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import detector_eval

        return getattr(detector_eval, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
