"""Deep Latent Defence (Zizzo et al., arXiv:1910.03334): encoders on a classifier's layers, latent k-NN detection."""

from .adaptive import CentroidAttack, EnsembleModel, adaptive_attack, ensemble_pgd
from .contrastive import contrastive_loss, sample_pairs
from .detector import DeepLatentDefence
from .paper_attack import paper_adaptive
from .encoders import EncoderDecoder, InsertedModel, activation_shape, make_decoder, make_encoder
from .pruning import prune_mask, pruned_embeddings
from .training import EncoderTrainConfig, load_encoders, save_encoders, train_encoder

__all__ = ["CentroidAttack", "DeepLatentDefence", "EncoderDecoder", "EncoderTrainConfig", "EnsembleModel", "InsertedModel",
           "activation_shape", "adaptive_attack", "contrastive_loss", "ensemble_pgd", "load_encoders", "make_decoder",
           "make_encoder", "paper_adaptive", "prune_mask", "pruned_embeddings", "sample_pairs", "save_encoders", "train_encoder"]
