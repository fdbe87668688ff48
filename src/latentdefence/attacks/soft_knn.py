"""The guide-point soft-kNN attack on k-NN detectors (Sitawarin & Wagner 2019/2020)."""

from __future__ import annotations

from typing import Any

import torch

from .base import margin
from .detector_aware import DetectorAttack, KeepBest, iterative_settings
from .randomness import Randomness
from .registry import InEvaluation, register_attack


def soft_inside(z: torch.Tensor, points: torch.Tensor, radius: torch.Tensor, temperature: float) -> torch.Tensor:
    """sigmoid((radius - |z - p|) / (temperature * radius)) (B, m): a differentiable "p is within radius of z"
    for queries z (B, d), points (B, m, d) and radii (B, 1) (Sitawarin & Wagner's soft k-NN, arXiv:1903.08333)."""
    squared = z.pow(2).sum(1, keepdim=True) + points.pow(2).sum(2) - 2 * torch.einsum("bd,bmd->bm", z, points)
    d = squared.clamp_min(1e-12).sqrt()                                                # (B, m)
    return torch.sigmoid((radius - d) / (temperature * radius + 1e-6))


def _needs_knn(detector: Any, threat: Any) -> str | None:
    """Guide points need a k-NN detector's latents, indexes and k."""
    ok = all(hasattr(detector, a) for a in ("latents", "indexes_", "k"))
    return None if ok else "needs a k-NN detector (`latents`, `indexes_`, `k`)"


def _settings(budget: Any) -> dict[str, Any]:
    return {**iterative_settings(budget), "n_targets": budget.n_targets, "refresh_every": budget.refresh_every}


@register_attack("guide_points", on="detector", targeted=(False,),
                 examples=({"eps": 0.1, "steps": 10, "n_targets": 2},),
                 evaluation=InEvaluation(_needs_knn, _settings, order=10, per_image_draws=True))
class GuidePointAttack(DetectorAttack):
    """Guide-point soft-kNN attack on any k-NN detector (DLD, Deep k-NN): F to a target class, and in every
    searched latent space the target class's guide points inside the k-NN ball.

    Sitawarin & Wagner, "On the Robustness of Deep K-Nearest Neighbors", arXiv:1903.08333 (and "Minimum-Norm
    Adversarial Examples on KNN and KNN-Based Models", arXiv:1906.03972). For a target class t, per tap the
    guides are the m nearest indexed points of class t to the current embedding z and the threshold r is the
    midpoint of the current k-th and (k+1)-th neighbour distances; both are refreshed every `refresh_every` steps. The loss
    minimised is

        max(max_{i != t} f_i(x) - f_t(x), -kappa) + detector_weight * sum_taps mean_guides (1 - soft_inside)

    (`soft_inside` = sigmoid((r - |z - g|) / (temperature r))), so once F says t with margin kappa only the
    latent term moves x. Targets: the `n_targets` classes F ranks highest after the true label on the clean
    input, tried in turn on the inputs not yet evading, each with `restarts` random starts. Keep-best by the
    detector's own `predict` every `check_every` steps (`KeepBest`); evading inputs stop.

    The detector must expose `classifier`, `predict`, `latents(images) -> {tap: (B, d)}` (differentiable),
    `indexes_` ({tap: KNNIndex}) and `k`.

    Norm "linf" (default) or "l2". Args: eps; step_size (default 2.5 eps / steps); steps (100); n_targets (3);
    m guides (default: the detector's k); refresh_every (10); temperature (0.1); kappa (5.0); detector_weight
    (1.0); restarts (1); check_every (5); generator (random starts).
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) int64 -> AttackResult (success = evaded).

    Example:
        >>> result = GuidePointAttack(eps=0.3, steps=100, n_targets=3)(detector, x, y)
        >>> robustness = 1 - result.success_rate
    """

    def __init__(self, eps: float, step_size: float | None = None, steps: int = 100, *, norm: str = "linf",
                 n_targets: int = 3, m: int | None = None, refresh_every: int = 10, temperature: float = 0.1,
                 kappa: float = 5.0, detector_weight: float = 1.0, restarts: int = 1, check_every: int = 5,
                 generator: Randomness = None) -> None:
        self._store_threat_model(eps, step_size, steps, norm, restarts, check_every, generator)
        if min(n_targets, refresh_every) < 1 or (m is not None and m < 1) or temperature <= 0:
            raise ValueError(f"need n_targets, m, refresh_every >= 1 and temperature > 0; got {n_targets}, {m}, "
                             f"{refresh_every}, {temperature}")
        self.n_targets = n_targets
        self.m = m
        self.refresh_every = refresh_every
        self.temperature = temperature
        self.kappa = kappa
        self.detector_weight = detector_weight

    def evade(self, detector: Any, images: torch.Tensor, labels: torch.Tensor, best: KeepBest,
              starts: torch.Tensor | None) -> None:
        with torch.no_grad():
            logits = detector.classifier(images)
        ranked = logits.scatter(1, labels[:, None], -float("inf")).argsort(dim=1, descending=True)  # (N, K)
        m = self.m or int(detector.k)
        guides: dict[str, torch.Tensor] = {}
        valid: dict[str, torch.Tensor] = {}
        radius: dict[str, torch.Tensor] = {}
        for r in range(min(self.n_targets, logits.shape[1] - 1)):
            targets = ranked[:, r]

            def objective(x: torch.Tensor, rows: torch.Tensor, step: int) -> torch.Tensor:
                t = targets[rows]
                if step % self.refresh_every == 0:
                    self._refresh(detector, x, rows, t, m, len(images), guides, valid, radius)
                x = x.detach().requires_grad_(True)
                with torch.enable_grad():
                    hinge = margin(detector.classifier(x), t, targeted=True).clamp_min(-self.kappa)
                    latent = sum(self._outside(z, detector.indexes_[tap].embeddings[guides[tap][rows.cpu()]].to(z),
                                               valid[tap][rows].to(z), radius[tap][rows].to(z))
                                 for tap, z in detector.latents(x).items())
                    return -torch.autograd.grad((hinge + self.detector_weight * latent).sum(), x)[0]
            self._descend(images, best, objective, torch.arange(len(images), device=images.device), starts)

    def _outside(self, z: torch.Tensor, guides: torch.Tensor, valid: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        """Mean over a row's valid guides of 1 - soft_inside (R,); 0 where the target class has no point here."""
        outside = (1 - soft_inside(z, guides, radius, self.temperature)) * valid                  # (R, m)
        return outside.sum(1) / valid.sum(1).clamp_min(1)

    @torch.no_grad()
    def _refresh(self, detector: Any, x: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, m: int, n: int,
                 guides: dict[str, torch.Tensor], valid: dict[str, torch.Tensor],
                 radius: dict[str, torch.Tensor]) -> None:
        """Guide indices (N, m) into the tap's index, their validity (N, m) and k-th-neighbour radii (N, 1) per tap,
        rewritten for `rows` (indices, not embeddings: raw-layer latents of Deep k-NN have thousands of dims)."""
        for tap, z in detector.latents(x).items():
            index = detector.indexes_[tap]
            if tap not in guides:
                guides[tap] = torch.zeros(n, m, dtype=torch.int64)
                valid[tap] = torch.zeros(n, m)
                radius[tap] = torch.ones(n, 1)
            idx = index.class_neighbours(z, targets.cpu(), m)                                 # (R, m)
            dist = index.search(z, min(int(detector.k) + 1, len(index)))[0]                 # (R, k + 1)
            guides[tap][rows.cpu()] = idx.clamp_min(0)
            valid[tap][rows.cpu()] = (idx >= 0).float()
            radius[tap][rows.cpu()] = dist[:, int(detector.k) - 1:].mean(1, keepdim=True)
