"""Deep Latent Defence (Zizzo et al., arXiv:1910.03334): encoders on a classifier's layers, latent k-NN detection."""

from .adaptive import CentroidAttack, EnsembleModel, adaptive_attack, ensemble_pgd
from .contrastive import contrastive_loss, sample_pairs
from .detector import ConformalDetector, DeepLatentDefence, Detection, KNNDetector
from .encoders import EncoderDecoder, InsertedModel, activation_shape, make_decoder, make_encoder
from .evaluate import AttackMetrics, CleanMetrics, attack_metrics, clean_metrics, cumulative_layers, roc_auc
from .knn import KNNIndex
from .nonconformity import calibrate_threshold, credibility, nonconformity, soft_nonconformity
from .pruning import prune_mask, pruned_embeddings
from .training import EncoderTrainConfig, load_encoders, save_encoders, train_encoder

__all__ = ["AttackMetrics", "CentroidAttack", "CleanMetrics", "ConformalDetector", "DeepLatentDefence", "Detection", "EncoderDecoder",
           "EncoderTrainConfig", "EnsembleModel", "InsertedModel", "KNNDetector", "KNNIndex", "activation_shape", "adaptive_attack",
           "attack_metrics", "calibrate_threshold", "clean_metrics", "contrastive_loss", "credibility",
           "cumulative_layers", "ensemble_pgd", "load_encoders", "make_decoder", "make_encoder", "nonconformity",
           "prune_mask", "pruned_embeddings", "roc_auc", "sample_pairs", "save_encoders", "soft_nonconformity",
           "train_encoder"]
