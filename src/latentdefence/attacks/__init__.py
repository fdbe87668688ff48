"""Adversarial attacks, one small class each, called as `attack(model, images, labels)`."""

from .base import Attack, AttackResult, cross_entropy, frozen_eval, perturbation_norm
from .pgd import FGSM, PGD

__all__ = ["FGSM", "PGD", "Attack", "AttackResult", "cross_entropy", "frozen_eval", "perturbation_norm"]
