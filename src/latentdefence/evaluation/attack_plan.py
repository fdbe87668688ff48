"""Which attacks an evaluation runs on a detector and how each is built at a budget: the registered detector attacks
(`attacks.registry.InEvaluation`), the papers' own (`register_paper_attack`), PGD on F, and the success rule."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._registry import Registry
from ..attacks import PGD, InEvaluation, Randomness, attack_entry, create_attack, evaluation_attacks
from ..attacks.detector_aware import DetectorAttack
from ..detectors.base import Detection, evaded
from .threat import Budget, ThreatModel


@dataclass(frozen=True)
class PaperAttack:
    """A paper's own attack on its own detector, added to every evaluation once the paper's package is imported."""

    # (detector, threat model, the paper's extra modules for it or None) -> why it does not apply, or None
    applies: Callable[[Any, ThreatModel, Mapping[str, nn.Module] | None], str | None]
    # (detector, extras, images, labels, eps, budget, generator, image_mean) -> adversarial images; image_mean(values)
    # averages a per-image quantity over every process's images (a choice made on the whole set, e.g. DLD's alpha2)
    run: Callable[[Any, Mapping[str, nn.Module], torch.Tensor, torch.Tensor, float, "Budget", Randomness,
                   Callable[[torch.Tensor], float]], torch.Tensor]


# found through the entry points installed packages declare, so an evaluation lists the same attacks (run or skipped,
# with why) whether or not the paper's package was imported first
_PAPER_ATTACKS: Registry[PaperAttack] = Registry("paper attack", group="latentdefence.paper_attacks")


def paper_attack(kind: str) -> PaperAttack | None:
    """The paper attack registered as `kind`, else None."""
    return _PAPER_ATTACKS.get(kind) if kind in _PAPER_ATTACKS.names() else None


def register_paper_attack(name: str, attack: PaperAttack) -> None:
    """Add `attack` as `name` (its stage `attack_NAME`, its rows in results.json) to every detector evaluation."""
    _PAPER_ATTACKS.add(name, attack)


def applicable(detector: Any, threat: ThreatModel, extras: Mapping[str, nn.Module] | None = None
               ) -> tuple[list[str], dict[str, str]]:
    """(the detector-aware attacks that apply, {attack: why not} for the others)."""
    run, skipped = [], {}
    for name in _PAPER_ATTACKS.names():
        reason = _PAPER_ATTACKS.get(name).applies(detector, threat, extras)
        if reason is None:
            run.append(name)
        else:
            skipped[name] = reason
    for label, name in evaluation_attacks().items():
        reason = in_evaluation(label).applies(detector, threat)
        if reason is None:
            run.append(label)
        else:
            skipped[label] = reason
    return run, skipped


def detector_attack(kind: str, threat: ThreatModel, b: Budget, generator: Randomness,
                    eps: float | None = None) -> DetectorAttack:
    """The registered detector attack labelled `kind` at budget `b` (eps: another radius, for the eps sweep)."""
    name = evaluation_attacks().get(kind)
    if name is None:
        raise ValueError(f"unknown detector attack {kind!r}; registered for evaluations: "
                         f"{', '.join(evaluation_attacks())}")
    norm = {"norm": threat.norm} if "norm" in attack_entry(name).parameters() else {}
    attack: DetectorAttack = create_attack(name, eps=threat.eps if eps is None else eps, generator=generator,
                                           **in_evaluation(kind).settings(b), **norm)
    return attack


def in_evaluation(kind: str) -> InEvaluation:
    """The evaluation spec of the registered detector attack labelled `kind`."""
    spec = attack_entry(evaluation_attacks()[kind]).evaluation
    assert spec is not None                 # evaluation_attacks lists only attacks with one
    return spec


def detector_attacks() -> tuple[str, ...]:
    """Every detector-aware attack an evaluation may run: the papers' own, then the registered ones, in order."""
    return (*_PAPER_ATTACKS.names(), *evaluation_attacks())


def pgd_on_f(threat: ThreatModel, b: Budget, generator: Randomness, eps: float | None = None) -> PGD:
    e = threat.eps if eps is None else eps
    return PGD(eps=e, step_size=None if b.pgd_step is None else b.pgd_step * e, steps=b.pgd_steps,
               restarts=b.pgd_restarts, norm=threat.norm, generator=generator)


def robust_fraction(v: Detection, labels: torch.Tensor) -> float:
    """Correct, or misclassified and flagged."""
    return float((~evaded(v, labels)).float().mean())
