"""Adversarial attacks, one small class each, called as `attack(model, images, labels)`."""

from .apgd import APGD, APGDT, dlr_loss, dlr_targeted_loss
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
from .io import AdversarialSet, load_adversarial_set, save_adversarial_set
from .jsma import JSMA
from .pgd import FGSM, PGD

__all__ = ["APGD", "AdversarialSet", "load_adversarial_set", "save_adversarial_set", "APGDT", "FGSM", "JSMA", "PGD", "Attack", "AttackResult", "CarliniWagnerL2", "channels_last_weights", "cross_entropy",
           "dlr_loss", "dlr_targeted_loss", "frozen_eval", "margin", "perturbation_norm", "project"]
