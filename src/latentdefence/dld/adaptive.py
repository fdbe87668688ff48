"""The white-box adaptive attack on DLD (Section V-B): PGD on the Eq. 9 ensemble, then Eq. 10.

Stage (i) runs PGD on the ensemble P_ens = sum_i P_i of F alone and F with each encoder-decoder
inserted (``EnsembleModel`` returns log of the mean softmax, so cross-entropy on it is the ensemble's).
Stage (ii) (``CentroidAttack``) takes the examples F now misclassifies, as class y_t, and follows Eq. 10:

    direction = alpha1 * g_CE - alpha2 * g_c,   g_CE = grad J_CE(F(x), y),  g_c = sum_i grad ||E_i(x) - c_i(y_t)||_2
    x <- clip_[0,1](clip_{x0 +- eps}(x + step_size * sign(direction)))

By default (``combine="normalised"``) each gradient is first divided by its per-sample L2 norm, so
alpha2 / alpha1 really trades the two terms: the CE and latent-distance gradients differ by orders of
magnitude, and with raw gradients (``combine="raw"``, the earlier behaviour) the centroid term won the
sign for every alpha2 >= 5, which made Fig. 3 flat. With unit gradients only the ratio alpha2 / alpha1
matters. Stepping along the *sign* keeps the step a fixed L-inf move as in PGD.
For each input the last iterate that F still misclassifies is returned (the paper's attacker keeps
misclassification as its goal); inputs F already classifies correctly are returned unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from ..attacks import PGD, AttackResult
from ..attacks.base import attack_success, check_iterative, frozen_eval, perturbation_norm
from ..attacks.randomness import Randomness
from ..models import TapModules, TappedModel
from .encoders import EncoderDecoder


class EnsembleModel(nn.Module):
    """Eq. 9 as logits: log(mean_i softmax(F_i(x))) over F and F with each A_N inserted."""

    def __init__(self, classifier: TappedModel, encoders: Mapping[str, EncoderDecoder]) -> None:
        super().__init__()
        self.classifier = classifier
        self.encoders = TapModules(encoders)
        self.last = classifier.deepest_tap(self.encoders.keys())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts = self.classifier.intermediates(x, list(self.encoders.keys()))
        members = [self.classifier.forward_from(acts[self.last], self.last)]
        members += [self.classifier.forward_from(ed(acts[tap]), tap) for tap, ed in self.encoders.items()]
        logp = torch.stack([m.log_softmax(dim=1) for m in members])       # (M, B, K)
        return torch.logsumexp(logp, dim=0) - math.log(len(members))


@dataclass(frozen=True)
class CentroidAttack:
    """Eq. 10: keep F fooled while pulling each encoder's embedding to the target class centroid."""

    eps: float = 0.3
    alpha1: float = 1.0
    alpha2: float = 1.0
    steps: int = 100
    step_size: float = 0.01
    combine: str = "normalised"          # "normalised" (unit gradient per sample) or "raw"

    def __post_init__(self) -> None:
        check_iterative("CentroidAttack", "linf", self.eps, self.step_size, steps=self.steps)
        if self.combine not in ("normalised", "raw"):
            raise ValueError(f"combine must be 'normalised' or 'raw', got {self.combine!r}")

    def __call__(self, classifier: TappedModel, encoders: Mapping[str, nn.Module], centroids: Mapping[str, torch.Tensor],
                 originals: torch.Tensor, start: torch.Tensor, labels: torch.Tensor) -> AttackResult:
        """Refine `start` (inside the eps-ball around `originals`); centroids: tap -> (K, d)."""
        if start.shape != originals.shape or labels.shape != originals.shape[:1]:
            raise ValueError(f"originals {tuple(originals.shape)}, start {tuple(start.shape)} and labels "
                             f"{tuple(labels.shape)} do not match")
        encs = TapModules(encoders)
        with frozen_eval(classifier), frozen_eval(encs):
            x = self._project(start.detach().clone(), originals)
            with torch.no_grad():
                targets = classifier(x).argmax(1)
            active = targets != labels
            best = x.clone()
            for _ in range(self.steps):
                stepped, wrong = self._step(classifier, encs, centroids, x, originals, labels, targets)
                best[active & wrong] = x[active & wrong]
                x = stepped
            with torch.no_grad():
                keep = active & attack_success(classifier(x).argmax(1), labels)
                best[keep] = x[keep]
                preds = classifier(best).argmax(1)
        return AttackResult(best, attack_success(preds, labels), perturbation_norm(best - originals, "linf"), preds)

    def _step(self, classifier: TappedModel, encoders: TapModules, centroids: Mapping[str, torch.Tensor],
              x: torch.Tensor, originals: torch.Tensor, labels: torch.Tensor,
              targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One Eq. 10 step from x; also whether x itself was misclassified (so it may be kept)."""
        x = x.detach().requires_grad_(True)
        taps = list(encoders.keys())
        last = classifier.deepest_tap(taps)
        acts = classifier.intermediates(x, taps)
        logits = classifier.forward_from(acts[last], last)
        ce = nn.functional.cross_entropy(logits, labels, reduction="sum")
        cnt = cast(torch.Tensor, sum(_distance(encoders[t](acts[t]), centroids[t].to(x)[targets]).sum()
                                     for t in taps))                  # a tensor: `taps` is never empty
        g_ce, g_c = (torch.autograd.grad(term, x, retain_graph=True)[0] for term in (ce, cnt))
        if self.combine == "normalised":
            g_ce, g_c = _unit(g_ce), _unit(g_c)
        grad = self.alpha1 * g_ce - self.alpha2 * g_c                         # Eq. 10's direction
        with torch.no_grad():
            wrong = attack_success(logits.argmax(1), labels)
            stepped = self._project(x + self.step_size * grad.sign(), originals)
        return stepped, wrong

    def _project(self, x: torch.Tensor, originals: torch.Tensor) -> torch.Tensor:
        return torch.min(torch.max(x, originals - self.eps), originals + self.eps).clamp(0, 1)


def _unit(g: torch.Tensor) -> torch.Tensor:
    """Each sample's gradient (B, ...) divided by its L2 norm (zero stays zero)."""
    norms = g.flatten(1).norm(dim=1).clamp_min(1e-12)                  # (B,)
    return g / norms.view(-1, *([1] * (g.ndim - 1)))


def _distance(z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """L2 distance per row (B,), with a finite gradient at zero distance."""
    return ((z - c).pow(2).sum(dim=1) + 1e-12).sqrt()


def ensemble_pgd(classifier: TappedModel, encoders: Mapping[str, EncoderDecoder], images: torch.Tensor,
                 labels: torch.Tensor, *, eps: float = 0.3, step_size: float = 0.01, steps: int = 100,
                 restarts: int = 1, generator: Randomness = None) -> AttackResult:
    """Stage (i): PGD on the Eq. 9 ensemble; success and predictions are F's (what the detector sees)."""
    ens = EnsembleModel(classifier, encoders)
    adv = PGD(eps=eps, step_size=step_size, steps=steps, restarts=restarts, generator=generator)(ens, images, labels)
    with frozen_eval(classifier), torch.no_grad():
        preds = classifier(adv.images).argmax(1)
    return AttackResult(adv.images, attack_success(preds, labels), adv.norms, preds)


def adaptive_attack(classifier: TappedModel, encoders: Mapping[str, EncoderDecoder],
                    centroids: Mapping[str, torch.Tensor], images: torch.Tensor, labels: torch.Tensor, *,
                    eps: float = 0.3, step_size: float = 0.01, steps: int = 100, restarts: int = 1,
                    centroid: CentroidAttack | None = None, generator: Randomness = None) -> AttackResult:
    """Both stages: ensemble PGD, then Eq. 10 on the examples F misclassifies."""
    first = ensemble_pgd(classifier, encoders, images, labels, eps=eps, step_size=step_size, steps=steps,
                         restarts=restarts, generator=generator)
    second = centroid or CentroidAttack(eps=eps, step_size=step_size)
    return second(classifier, {t: ed.encoder for t, ed in encoders.items()}, centroids, images, first.images, labels)
