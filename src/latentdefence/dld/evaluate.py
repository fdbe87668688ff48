"""DLD's evaluation metrics (Section V), kept under their old import path: they live in
`latentdefence.evaluation.detection`, shared by every detector."""

from ..evaluation.detection import (AttackMetrics, CleanMetrics, attack_metrics, auc_interval, clean_metrics,
                                    cumulative_layers, max_layer_score, roc_auc, roc_points, tpr_at_fpr)

__all__ = ["AttackMetrics", "CleanMetrics", "attack_metrics", "auc_interval", "clean_metrics", "cumulative_layers",
           "max_layer_score", "roc_auc", "roc_points", "tpr_at_fpr"]
