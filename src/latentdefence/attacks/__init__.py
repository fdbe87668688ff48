"""Adversarial attacks, one small class each, called as `attack(model, images, labels)`."""

from .base import (
    Attack,
    AttackResult,
    channels_last_weights,
    cross_entropy,
    frozen_eval,
    margin,
    perturbation_norm,
    project,
)
from .cw import CarliniWagnerL2
from .pgd import FGSM, PGD

__all__ = ["FGSM", "PGD", "Attack", "AttackResult", "CarliniWagnerL2", "channels_last_weights", "cross_entropy",
           "frozen_eval", "margin", "perturbation_norm", "project"]
