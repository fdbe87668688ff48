"""Adversarial attacks, one small class each, called as `attack(model, images, labels)` (or on a detector), and
their registry: `create_attack(name, **settings)`, `list_attacks()`, `register_attack` (`registry.py`)."""

from .apgd import APGD, APGDT, apgd_losses, dlr_loss, dlr_targeted_loss, register_apgd_loss
from .autoattack import AutoAttack
from .base import (
    Attack,
    AttackResult,
    ascent_direction,
    attack_in_batches,
    attack_success,
    channels_last_weights,
    cross_entropy,
    frozen_eval,
    in_batches,
    margin,
    perturbation_norm,
    project,
    random_start,
)
from .cw import CarliniWagnerL2
from .detector_aware import Detector, DetectorAttack, KeepBest, OrthogonalPGD, SelectivePGD
from .io import AdversarialSet, load_adversarial_set, save_adversarial_set
from .jsma import JSMA
from .pgd import FGSM, PGD
from .randomness import ImageStreams, Randomness
from .registry import AttackEntry, InEvaluation, attack_entry, create_attack, evaluation_attacks, list_attacks, register_attack
from .soft_knn import GuidePointAttack, soft_inside
from .square import DetectorSquare, Square

__all__ = ["APGD", "apgd_losses", "register_apgd_loss", "AdversarialSet", "load_adversarial_set", "save_adversarial_set", "APGDT", "FGSM", "JSMA", "PGD", "Attack", "AttackResult", "CarliniWagnerL2", "channels_last_weights", "cross_entropy",
           "dlr_loss", "dlr_targeted_loss", "frozen_eval", "margin", "perturbation_norm", "project",
           "AutoAttack", "Detector", "DetectorAttack", "GuidePointAttack", "KeepBest", "OrthogonalPGD", "SelectivePGD",
           "DetectorSquare", "Square", "ascent_direction", "attack_in_batches", "attack_success", "in_batches", "random_start", "soft_inside",
           "AttackEntry", "InEvaluation", "attack_entry", "create_attack", "evaluation_attacks", "list_attacks",
           "register_attack", "ImageStreams", "Randomness"]
