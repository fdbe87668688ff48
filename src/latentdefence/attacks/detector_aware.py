"""Attacks on a classifier guarded by a detector: keep-best by the detector's own decision, and
selective / orthogonal PGD on the detector's differentiable surrogate (Bryniarski et al. 2022).

A detector follows the shared contract (`Detector`): `classifier` (the F it guards), `predict(images)`
returning `.predicted`, `.is_adversarial` and `.nonconformity` (higher = more suspicious), and
`surrogate_score(images, classes)` (B,), a smooth stand-in for the thresholded score when F predicts
`classes`. An attack on a detector succeeds on an input when F misclassifies it and the detector's own
exact decision does not flag it; `KeepBest` holds, per input, the best iterate seen by that rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..detectors.base import Detector, evaded
from .base import (Attack, AttackResult, ascent_direction, attack_success, check_inputs, check_iterative, cross_entropy,
                   frozen_eval, madry_step_size, perturbation_norm, project, random_start)
from .randomness import Randomness, call_scope
from .registry import InEvaluation, register_attack


# (iterates of the open rows (R, C, H, W), their global indices (R,), step) -> gradient to ascend (R, C, H, W)
Objective = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


class KeepBest:
    """Per input the best iterate by the detector's exact decision: evaded (F wrong, not flagged) beats
    flagged-but-wrong, which beats correctly classified; within a rank the lower detector score wins, so
    the kept evasion also clears any stricter threshold the attack happened to clear."""

    def __init__(self, detector: Detector, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.detector = detector
        self.labels = labels
        self.images = images.detach().clone()
        self.rank = torch.full((len(images),), -1, dtype=torch.int64)
        self.score = torch.full((len(images),), float("inf"), dtype=torch.float64)
        self.predictions = labels.detach().cpu().clone()
        self.update(images, torch.arange(len(images), device=images.device))

    @property
    def evaded(self) -> torch.Tensor:
        """(N,) bool: an evading iterate has been seen."""
        return self.rank == 2

    @torch.no_grad()
    def update(self, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Query the detector on `images` (for inputs `rows`), keep improvements; (R,) bool: evading now."""
        out = self.detector.predict(images.detach())
        pred, r = out.predicted.cpu(), rows.cpu()
        score = out.nonconformity.detach().cpu().to(torch.float64)
        labels = self.labels[r].cpu()
        escaped = evaded(out, labels.to(out.predicted.device)).cpu()
        rank = torch.where(escaped, 2, torch.where(attack_success(pred, labels), 1, 0))
        better = (rank > self.rank[r]) | ((rank == self.rank[r]) & (score < self.score[r]))
        keep = r[better]
        self.images[keep.to(self.images.device)] = images.detach()[better.to(images.device)]
        self.rank[keep], self.score[keep], self.predictions[keep] = rank[better], score[better], pred[better]
        return (rank == 2).to(rows.device)

    def result(self, originals: torch.Tensor, norm: str) -> AttackResult:
        """The kept iterates; `success` = evaded (misclassified by F and not flagged)."""
        return AttackResult(self.images, self.evaded.to(originals.device),
                            perturbation_norm(self.images - originals, norm), self.predictions.to(originals.device))


class DetectorAttack(Attack):
    """Base of the attacks on F + detector: input checks, frozen F, keep-best and a PGD loop with restarts.

    Called as `attack(detector, images, labels)`; returns an `AttackResult` whose `success` means *misclassified
    by F and not flagged by the detector's own `predict`*. A subclass stores its settings and writes `evade`,
    which calls `self._descend` with its objective (or drives `KeepBest` itself). Untargeted threat model.
    """

    eps: float
    step_size: float
    steps: int
    restarts: int
    check_every: int
    generator: Randomness

    def __call__(self, detector: Detector, images: torch.Tensor, labels: torch.Tensor,  # type: ignore[override]  # a detector, not F
                 targets: torch.Tensor | None = None, *, starts: torch.Tensor | None = None) -> AttackResult:
        """`starts` (optional, shaped like images): where the first run begins instead of a random point, e.g.
        another attack's output (projected into this attack's ball); they are judged by the detector first."""
        images = check_inputs(images, labels, targets, False, detector.classifier)
        if starts is not None and starts.shape != images.shape:
            raise ValueError(f"starts must be shaped like images {tuple(images.shape)}, got {tuple(starts.shape)}")
        if images.shape[0] == 0:
            empty = torch.zeros(0, device=images.device)
            return AttackResult(images.detach().clone(), empty.bool(), empty, labels.clone())
        starts = None if starts is None else project(starts.detach(), images, self.eps, self.norm)
        return self._in_batches(lambda x, y, s: self._evade_batch(detector, x, y, s), images, labels, starts)

    def _evade_batch(self, detector: Detector, images: torch.Tensor, labels: torch.Tensor,
                     starts: torch.Tensor | None) -> AttackResult:
        """One batch: keep-best over `evade`, the starts judged first."""
        with frozen_eval(detector.classifier), call_scope(self.generator, type(self).__name__):
            best = KeepBest(detector, images, labels)
            if starts is not None:
                best.update(starts, torch.arange(len(images), device=images.device))
            self.evade(detector, images.detach().clone(), labels.detach().clone(), best, starts)
        return best.result(images, self.norm)

    def _store_threat_model(self, eps: float, step_size: float | None, steps: int, norm: str, restarts: int,
                            check_every: int, generator: Randomness) -> None:
        """Check and store the settings every detector attack shares (step size default: Madry's 2.5 eps / steps)."""
        check_iterative(type(self).__name__, norm, eps, step_size, steps=steps, restarts=restarts, check_every=check_every)
        self.eps = eps
        self.step_size = madry_step_size(eps, steps, step_size)
        self.steps = steps
        self.norm = norm
        self.restarts = restarts
        self.check_every = check_every
        self.generator = generator

    def evade(self, detector: Detector, images: torch.Tensor, labels: torch.Tensor, best: KeepBest,
              starts: torch.Tensor | None) -> None:
        """Drive `best` toward evading iterates (first runs from `starts` when given)."""
        raise NotImplementedError

    def _descend(self, images: torch.Tensor, best: KeepBest, objective: Objective, rows: torch.Tensor,
                 starts: torch.Tensor | None) -> None:
        """`restarts` runs of projected steepest ascent on `objective` over `rows` (the first from `starts` when
        given, the others from random points); every `check_every` steps (and at the end) the detector decides,
        and inputs that evade leave the batch."""
        for restart in range(self.restarts):
            rows = rows[~best.evaded[rows.cpu()].to(rows.device)]
            if rows.numel() == 0:
                return
            x0 = images[rows]
            x = starts[rows] if restart == 0 and starts is not None else random_start(x0, self.eps, self.norm,
                                                                                        self.generator)
            for step in range(self.steps):
                grad = objective(x, rows, step)
                with torch.no_grad():
                    x = project(x + self.step_size * ascent_direction(grad, self.norm), x0, self.eps, self.norm)
                if (step + 1) % self.check_every == 0 or step == self.steps - 1:
                    open_ = ~best.update(x, rows)
                    rows, x, x0 = rows[open_], x[open_], x0[open_]
                    if rows.numel() == 0:
                        return


class _SurrogatePGD(DetectorAttack):
    """Shared settings of selective and orthogonal PGD."""

    def __init__(self, eps: float, step_size: float | None = None, steps: int = 100, *, norm: str = "linf",
                 restarts: int = 1, check_every: int = 5, generator: Randomness = None) -> None:
        self._store_threat_model(eps, step_size, steps, norm, restarts, check_every, generator)

    def evade(self, detector: Detector, images: torch.Tensor, labels: torch.Tensor, best: KeepBest,
              starts: torch.Tensor | None) -> None:
        def objective(x: torch.Tensor, rows: torch.Tensor, step: int) -> torch.Tensor:
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = detector.classifier(x)
                pred = logits.argmax(1).detach()
                fooled = attack_success(pred, labels[rows])
                classifier_loss = cross_entropy(logits, labels[rows])                       # ascend
                detector_loss = -detector.surrogate_score(x, pred)                          # ascend
                return self._combine(x, classifier_loss, detector_loss, fooled)
        self._descend(images, best, objective, torch.arange(len(images), device=images.device), starts)

    def _combine(self, x: torch.Tensor, classifier_loss: torch.Tensor, detector_loss: torch.Tensor,
                 fooled: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def iterative_settings(budget: Any) -> dict[str, Any]:
    """What a gradient detector attack reads from an evaluation budget: steps, restarts, how often it checks."""
    return {"steps": budget.steps, "restarts": budget.restarts, "check_every": budget.check_every}


def needs_surrogate(detector: Any, threat: Any) -> str | None:
    """The surrogate attacks need the detector's differentiable `surrogate_score`."""
    return None if hasattr(detector, "surrogate_score") else "needs `surrogate_score`"


@register_attack("selective", on="detector", targeted=(False,), examples=({"eps": 0.1, "steps": 10},),
                 evaluation=InEvaluation(needs_surrogate, iterative_settings, order=20, starts="autoattack",
                                         per_image_draws=True))
class SelectivePGD(_SurrogatePGD):
    """Selective PGD: step on F's loss until F is fooled, then on the detector's surrogate only.

    Bryniarski, Hingun, Pachuca, Wang, Carlini, "Evading Adversarial Example Detectors: A Tale of Two
    Losses... via Orthogonal Projected Gradient Descent", arXiv:2106.00620, Sec. 4.1 ("selective gradient
    descent"). Per input and step: ascend cross-entropy of F while F(x) = y, else descend
    `detector.surrogate_score(x, F(x))`; never a fixed weighted sum. Keep-best by the detector's `predict`
    every `check_every` steps (`KeepBest`); inputs that evade stop.

    Norm "linf" (default) or "l2". Args: eps; step_size (default 2.5 eps / steps); steps (100); restarts (1,
    each from a random start, only on inputs not yet evading); check_every (5); generator (random starts).
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) int64 -> AttackResult (success = evaded).

    Example:
        >>> result = SelectivePGD(eps=0.3, steps=100)(detector, x, y)
        >>> robustness = 1 - result.success_rate
    """

    def _combine(self, x: torch.Tensor, classifier_loss: torch.Tensor, detector_loss: torch.Tensor,
                 fooled: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(torch.where(fooled, detector_loss, classifier_loss).sum(), x)[0]


ORTHOGONAL_ROUNDING = 1e-5    # projected components below this fraction of the largest are float32 rounding


@register_attack("orthogonal", on="detector", targeted=(False,), examples=({"eps": 0.1, "steps": 10},),
                 evaluation=InEvaluation(needs_surrogate, iterative_settings, order=30, per_image_draws=True))
class OrthogonalPGD(_SurrogatePGD):
    """Orthogonal PGD: each step follows one loss's gradient with its component along the other's removed.

    Bryniarski et al., arXiv:2106.00620, Sec. 4.2: while F(x) = y, ascend F's cross-entropy gradient projected
    orthogonal to the detector's; once fooled, descend the detector's surrogate gradient projected orthogonal
    to F's, so neither step undoes the other to first order. Per-sample projections on the flattened input
    gradients; the L-inf step is the sign of the projected gradient. Keep-best as `SelectivePGD`.

    Norm, args, shapes: as `SelectivePGD`.

    Example:
        >>> result = OrthogonalPGD(eps=0.3, steps=100)(detector, x, y)
    """

    def _combine(self, x: torch.Tensor, classifier_loss: torch.Tensor, detector_loss: torch.Tensor,
                 fooled: torch.Tensor) -> torch.Tensor:
        g_cls, = torch.autograd.grad(classifier_loss.sum(), x, retain_graph=True)
        g_det, = torch.autograd.grad(detector_loss.sum(), x)
        primary = torch.where(fooled.view(-1, *[1] * (x.ndim - 1)), g_det, g_cls).flatten(1)  # (R, F)
        other = torch.where(fooled.view(-1, *[1] * (x.ndim - 1)), g_cls, g_det).flatten(1)    # (R, F)
        coef = (primary * other).sum(1, keepdim=True) / other.pow(2).sum(1, keepdim=True).clamp_min(1e-20)
        residual = primary - coef * other
        # where the two gradients are (nearly) parallel what is left is rounding, whose sign would move every pixel a
        # full step in a direction set by the order BLAS summed in (so by the batch size): such components stay put
        rounding = residual.abs() <= ORTHOGONAL_ROUNDING * primary.abs().amax(1, keepdim=True)
        return residual.masked_fill(rounding, 0.0).view_as(x)
