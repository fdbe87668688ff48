"""Metrics, plots and reports shared by every experiment."""

from .metrics import accuracy, batched_predict, robust_accuracy, wilson_interval

__all__ = ["accuracy", "batched_predict", "robust_accuracy", "wilson_interval"]
