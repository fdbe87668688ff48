"""An AutoAttack-style cascade on a classifier alone: APGD-CE, APGD-T, then Square (Croce & Hein 2020)."""

from __future__ import annotations

import torch
from torch import nn

from .apgd import APGD, APGDT
from .randomness import Randomness
from .base import Attack, AttackResult, attack_success, check_inputs, check_iterative, frozen_eval, perturbation_norm
from .registry import register_attack
from .square import Square


@register_attack("autoattack", targeted=(False,),
                 examples=({"eps": 0.1, "steps": 3, "n_target_classes": 2, "square_queries": 10},))
class AutoAttack(Attack):
    """AutoAttack's standard L-inf cascade with its "still robust" bookkeeping.

    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
    attacks", arXiv:2003.01690: a boolean vector marks the inputs F still classifies correctly; each attack
    runs only on those, an input broken by any attack keeps that attack's example, and robust accuracy is
    recorded after each attack (`evaluate`). The last attack (Square, gradient-free) is the check for
    gradient masking: if it breaks inputs the gradient attacks could not, their gradients were misleading.

    Norm "linf" (default) or "l2"; under L2 the cascade is APGD-CE and APGD-T only (our Square is L-inf).
    Args: eps; steps (APGD iterations, default 100); n_target_classes (APGD-T, default 9);
    square_queries (default 5000); restarts (APGD-CE restarts, default 1); generator.
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) int64 -> AttackResult.

    Example:
        >>> result, robust_after = AutoAttack(eps=0.3).evaluate(model, x, y)
        >>> robust_after   # {"clean": 0.98, "apgd-ce": 0.91, "apgd-t": 0.90, "square": 0.90}
    """

    def __init__(self, eps: float, steps: int = 100, *, n_target_classes: int = 9, square_queries: int = 5000,
                 restarts: int = 1, norm: str = "linf", generator: Randomness = None) -> None:
        check_iterative("AutoAttack", norm, eps, steps=steps, n_target_classes=n_target_classes,
                        square_queries=square_queries, restarts=restarts)
        self.eps = eps
        self.steps = steps
        self.n_target_classes = n_target_classes
        self.square_queries = square_queries
        self.restarts = restarts
        self.norm = norm
        self.generator = generator

    def attacks(self) -> dict[str, Attack]:
        """The cascade, in order."""
        out: dict[str, Attack] = {
            "apgd-ce": APGD(self.eps, self.steps, norm=self.norm, loss="ce", restarts=self.restarts,
                            generator=self.generator),
            "apgd-t": APGDT(self.eps, self.steps, norm=self.norm, n_target_classes=self.n_target_classes,
                            generator=self.generator)}
        if self.norm == "linf":
            out["square"] = Square(self.eps, self.square_queries, generator=self.generator)
        return out

    def run(self, model: nn.Module, images: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return self._cascade(model, images, goal)[0]

    def evaluate(self, model: nn.Module, images: torch.Tensor,
                 labels: torch.Tensor) -> tuple[AttackResult, dict[str, float]]:
        """The cascade's result and the robust accuracy after each stage ("clean" first)."""
        images = check_inputs(images, labels, None, False, model)
        with frozen_eval(model):
            adv, robust_after = self._cascade(model, images.detach().clone(), labels.detach().clone())
            with torch.no_grad():
                preds = model(adv).argmax(1)
        return (AttackResult(adv, attack_success(preds, labels), perturbation_norm(adv - images, self.norm), preds),
                robust_after)

    def _cascade(self, model: nn.Module, images: torch.Tensor,
                 labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        adv = images.clone()
        with torch.no_grad():
            robust = ~attack_success(model(images).argmax(1), labels)
        robust_after = {"clean": float(robust.float().mean()) if len(labels) else float("nan")}
        for name, attack in self.attacks().items():
            rows = robust.nonzero().squeeze(1)
            if rows.numel():
                result = attack(model, images[rows], labels[rows])
                broken = rows[result.success]
                adv[broken], robust[broken] = result.images[result.success], False
            robust_after[name] = float(robust.float().mean()) if len(labels) else float("nan")
        return adv, robust_after
