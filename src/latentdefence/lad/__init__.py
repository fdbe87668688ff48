"""Latent Adversarial Defence (Zhou, Tsang, Yin): boundary-guided generation in a classifier's latent space
and adversarial fine-tuning on what it generates."""

from .attention_svm import AttentionSVM, TargetBoundaries
from .ga import ACGAN, ACGANConfig, UnrestrictedAttack, load_acgan, save_acgan, train_acgan
from .finetune import FinetuneConfig, LadSplit, eq4_loss, finetune, make_split, per_class_sample
from .generation import GeneratedSet, every_other_target, generate_set, perturb, success_by_eps, transition
from .generator import (GENERATORS, GeneratorConfig, LatentGenerator, create_generator, extract_latents, generate,
                        lp_loss, reconstruction_mse, train_generator)

__all__ = ["ACGAN", "ACGANConfig", "GENERATORS", "AttentionSVM", "UnrestrictedAttack", "load_acgan", "save_acgan",
           "train_acgan", "FinetuneConfig", "GeneratedSet", "GeneratorConfig", "LadSplit",
           "LatentGenerator", "TargetBoundaries", "create_generator", "eq4_loss", "every_other_target",
           "extract_latents", "finetune", "generate", "generate_set", "lp_loss", "make_split", "per_class_sample",
           "perturb", "reconstruction_mse", "success_by_eps", "train_generator", "transition"]
