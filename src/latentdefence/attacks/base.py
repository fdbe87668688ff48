"""What every attack shares: the threat model check, model-state hygiene and the result object."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NORMS = ("linf", "l2", "l0")


@dataclass(frozen=True)
class AttackResult:
    """Adversarial images with what evaluation needs, so nobody recomputes it."""

    images: torch.Tensor       # (N, C, H, W) in [0, 1]
    success: torch.Tensor      # (N,) bool: untargeted pred != label; targeted pred == target
    norms: torch.Tensor        # (N,) perturbation size in the attack's norm
    predictions: torch.Tensor  # (N,) model's class on `images`

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean().item()) if self.success.numel() else 0.0


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy, the default loss every gradient attack ascends."""
    return nn.functional.cross_entropy(logits, labels, reduction="none")


def perturbation_norm(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample size of a perturbation (N, ...) in `norm`."""
    flat = delta.flatten(1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        return flat.norm(dim=1)
    if norm == "l0":
        return (flat.abs() > 1e-6).sum(dim=1).to(delta.dtype)
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, no parameter gradients; both restored afterwards, whatever happens."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def check_inputs(images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None,
                 targeted: bool) -> None:
    """Reject inputs no attack can sensibly use, naming what is wrong."""
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"images must be floating point in [0, 1], got {images.dtype}")
    if torch.isnan(images).any():
        raise ValueError("images contain NaN")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(f"images must lie in [0, 1], got range [{images.min():.3g}, {images.max():.3g}]")
    if labels.shape != (images.shape[0],) or labels.dtype != torch.int64:
        raise ValueError(f"labels must be int64 of shape ({images.shape[0]},), got {labels.dtype} "
                         f"{tuple(labels.shape)}")
    if targeted and (targets is None or targets.shape != labels.shape):
        raise ValueError("a targeted attack needs targets=int64 tensor shaped like labels")
    if not targeted and targets is not None:
        raise ValueError("targets given to an untargeted attack; build it with targeted=True")


class Attack:
    """Base class: subclasses set `norm` and `targeted` and implement `run`."""

    norm: str = "linf"
    targeted: bool = False

    def run(self, model: nn.Module, images: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """Adversarial images for `goal` (true labels, or targets when targeted)."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 targets: torch.Tensor | None = None) -> AttackResult:
        check_inputs(images, labels, targets, self.targeted)
        goal = targets if self.targeted else labels
        assert goal is not None
        with frozen_eval(model):
            adv = self.run(model, images.detach().clone(), goal).detach().clamp(0, 1)
            with torch.no_grad():
                preds = model(adv).argmax(dim=1)
        success = preds == goal if self.targeted else preds != goal
        return AttackResult(adv, success, perturbation_norm(adv - images, self.norm), preds)

    def _success(self, logits: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        preds = logits.argmax(dim=1)
        return preds == goal if self.targeted else preds != goal
