"""Classifier training (clean, PGD adversarial, fast FGSM-RS), checkpoints and DDP."""

from .checkpoint import checkpoint_digest, load_checkpoint, save_checkpoint
from .distributed import DistInfo, init_distributed
from .loop import TrainConfig, TrainResult, train_classifier, trades_loss

__all__ = ["DistInfo", "TrainConfig", "TrainResult", "checkpoint_digest", "init_distributed", "load_checkpoint", "save_checkpoint",
           "trades_loss", "train_classifier"]
