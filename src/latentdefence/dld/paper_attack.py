"""DLD's own attack on DLD (Section V-B) in every detector evaluation: registered with `evaluation.attack_plan`
when `latentdefence.dld` is imported, so the generic evaluator knows no paper."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..attacks.base import in_batches
from ..attacks.randomness import Randomness
from ..detectors.base import evaded
from ..evaluation.detection import verdicts
from ..evaluation.attack_plan import PaperAttack, register_paper_attack
from ..evaluation.threat import Budget, ThreatModel
from .adaptive import CentroidAttack, ensemble_pgd
from .detector import DeepLatentDefence
from .encoders import EncoderDecoder


def applies(detector: Any, threat: ThreatModel, encoders: Mapping[str, nn.Module] | None) -> str | None:
    """Why the paper's attack cannot run on `detector`, or None: it needs a DLD, L-inf and the encoder-decoders."""
    if not isinstance(detector, DeepLatentDefence):
        return "DLD only"
    if threat.norm != "linf":
        return "L-inf only (sign steps, Eq. 10)"
    if encoders is None:
        return "no encoder-decoders given (the paper's attack needs the decoders)"
    return None


def paper_adaptive(det: DeepLatentDefence, encoders: Mapping[str, nn.Module], images: torch.Tensor,
                   labels: torch.Tensor, eps: float, b: Budget, generator: Randomness,
                   image_mean: Callable[[torch.Tensor], float] = lambda v: float(v.float().mean())) -> torch.Tensor:
    """DLD's Section V-B: ensemble PGD (Eq. 9), then Eq. 10 for each alpha2, and the alpha2 with the lowest
    robustness by the detector's decision (Table I's adaptive row; ties go to the smaller alpha2), judged by
    `image_mean` over all the evaluation's images (every process's block, when it is split)."""
    eds = {tap: _encoder_decoder(tap, ed) for tap, ed in encoders.items()}
    step = (b.pgd_step or 2.5 / b.adaptive_steps) * eps
    first = in_batches(lambda x, y: ensemble_pgd(det.classifier, eds, x, y, eps=eps, step_size=step,
                                                 steps=b.adaptive_steps, generator=generator).images,
                       images, labels, batch_size=b.batch_size, desc="ensemble pgd (paper's adaptive)")
    enc, centroids = {t: ed.encoder for t, ed in eds.items()}, det.centroids()
    best, best_robust = first, float("inf")
    for alpha2 in b.alpha2:
        attack = CentroidAttack(eps=eps, alpha1=b.alpha1, alpha2=alpha2, steps=b.centroid_steps, step_size=step)
        adv = in_batches(lambda x, y, start: attack(det.classifier, enc, centroids, x, start, y).images,
                         images, labels, first, batch_size=b.batch_size, desc=f"centroid attack, alpha2 {alpha2:g}")
        robust = image_mean(~evaded(verdicts(det, adv), labels))
        if robust < best_robust:
            best, best_robust = adv, robust
    return best


def _encoder_decoder(tap: str, module: nn.Module) -> EncoderDecoder:
    if not isinstance(module, EncoderDecoder):
        raise TypeError(f"encoders[{tap!r}] must be the tap's EncoderDecoder (the paper's attack inserts its decoder), "
                        f"got {type(module).__name__}")
    return module


register_paper_attack("adaptive_paper", PaperAttack(applies, paper_adaptive))
