"""Projected gradient descent (Madry et al. 2018) and FGSM (Goodfellow et al. 2015)."""

from __future__ import annotations

import torch
from torch import nn

from .base import (Attack, Loss, ascent_direction, check_iterative, cross_entropy, madry_step_size, project,
                   random_start)
from .randomness import Randomness
from .registry import register_attack


@register_attack("pgd", examples=({"eps": 0.1, "steps": 5, "restarts": 2, "early_stop": True},
                                   {"eps": 1.0, "steps": 5, "norm": "l2"}))
class PGD(Attack):
    """PGD, L-inf or L2, with random start, restarts (worst case kept per sample) and early stop.

    Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", arXiv:1706.06083.

    Args:
        eps: radius of the threat model's ball (L-inf: per pixel; L2: whole image).
        step_size: step per iteration (default 2.5 * eps / steps, Madry's rule).
        steps: iterations (default 40).
        norm: "linf" or "l2".
        restarts: independent runs; per sample the first successful one is kept, else the
            one with the highest loss (the DLD paper reports the worst of 5 restarts).
        random_start: start uniformly inside the ball (L-inf) or on a random point of it (L2).
        targeted: move toward `targets` instead of away from `labels`.
        early_stop: freeze samples once they succeed and drop them from the batch (keeps the
            smallest-effort example and saves their compute); off = Madry's last iterate.
        loss: per-sample loss `(logits, goal) -> (N,)` to ascend (descend when targeted); default CE.
        generator: torch.Generator for the random start, for reproducible runs, or `ImageStreams` (per image).
        clip: keep every iterate and the result in [0, 1] (default); False leaves the box, as cleverhans does
            by default (clip_min/clip_max None), for comparing with papers that used it.
        channels_last: run conv weights in channels_last format (see `channels_last_weights`;
            1.5x faster for `dld_mnist` on our CPU, slower for some nets, so off by default).

    Shapes: images (N, C, H, W) in [0, 1], labels (N,) int64 -> AttackResult.

    Example:
        >>> result = PGD(eps=0.3, step_size=0.01, steps=100, restarts=5)(model, x, y)
        >>> robust_accuracy = 1 - result.success.float().mean()
    """

    def __init__(self, eps: float, step_size: float | None = None, steps: int = 40, *, norm: str = "linf",
                 restarts: int = 1, random_start: bool = True, targeted: bool = False,
                 early_stop: bool = False, loss: Loss | None = None,
                 generator: Randomness = None, channels_last: bool = False, clip: bool = True) -> None:
        check_iterative("PGD", norm, eps, step_size, steps=steps, restarts=restarts)
        self.eps = eps
        self.step_size = madry_step_size(eps, steps, step_size)
        self.steps = steps
        self.norm = norm
        self.restarts = restarts
        self.random_start = random_start
        self.targeted = targeted
        self.early_stop = early_stop
        self.loss = loss or cross_entropy
        self.generator = generator
        self.channels_last = channels_last
        self.clip = clip

    def run(self, model: nn.Module, images: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        if self.restarts == 1:   # nothing to choose between: the run is not scored (one forward pass saved)
            return self._iterate(model, images, goal)
        sign = -1.0 if self.targeted else 1.0
        best = images.clone()
        best_loss = torch.full((images.shape[0],), -float("inf"), device=images.device)
        best_ok = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        for _ in range(self.restarts):
            adv = self._iterate(model, images, goal)
            with torch.no_grad():
                logits = model(adv)
                loss, ok = sign * self.loss(logits, goal), self._success(logits, goal)
            better = (ok & ~best_ok) | ((ok == best_ok) & ~best_ok & (loss > best_loss))
            best[better], best_loss[better] = adv[better], loss[better]
            best_ok |= ok
        return best

    def _iterate(self, model: nn.Module, images: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """One run from a (random) start: the last iterate, or with early stop each row's first successful one."""
        sign = -1.0 if self.targeted else 1.0
        adv = self._random_start(images) if self.random_start else images.clone()
        idx = torch.arange(images.shape[0], device=images.device)   # rows still moving (early stop)
        x, g = images, goal
        for _ in range(self.steps):
            a = (adv if idx.shape[0] == images.shape[0] else adv[idx]).detach().requires_grad_(True)
            logits = model(a)
            grad, = torch.autograd.grad(self.loss(logits, g).sum(), a)
            with torch.no_grad():
                step = self._step(grad) * (sign * self.step_size)
                a = self._project(a.detach() + step, x)
                if not self.early_stop:
                    adv = a
                    continue
                done = self._success(logits, g)                      # success at the pre-step point
                keep = ~done
                adv[idx[keep]] = a[keep]
                if done.any():
                    idx, x, g = idx[keep], x[keep], g[keep]
                    if idx.numel() == 0:
                        break
        return adv

    def _random_start(self, images: torch.Tensor) -> torch.Tensor:
        return random_start(images, self.eps, self.norm, self.generator, self.clip)

    def _step(self, grad: torch.Tensor) -> torch.Tensor:
        return ascent_direction(grad, self.norm)

    def _project(self, adv: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return project(adv, images, self.eps, self.norm, self.clip)


@register_attack("fgsm", examples=({"eps": 0.1},))
class FGSM(PGD):
    """Fast Gradient Sign Method: one L-inf step of size eps from the clean image.

    Goodfellow et al., "Explaining and Harnessing Adversarial Examples", arXiv:1412.6572.
    Args: eps (L-inf radius), targeted (step toward `targets`), clip (stay in [0, 1], default). Shapes as PGD.

    Example:
        >>> result = FGSM(eps=0.3)(model, x, y)
    """

    def __init__(self, eps: float, *, targeted: bool = False, loss: Loss | None = None,
                 channels_last: bool = False, clip: bool = True) -> None:
        super().__init__(eps, step_size=eps, steps=1, norm="linf", random_start=False,
                         targeted=targeted, loss=loss, channels_last=channels_last, clip=clip)
