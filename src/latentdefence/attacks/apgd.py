"""Auto-PGD with a loss chosen by name ("ce", "dlr"; `register_apgd_loss` adds one), and APGD-T (Croce & Hein 2020)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .._registry import Registry
from ..validation import check_choice, check_count, check_number
from .base import Attack, ascent_direction, attack_success, check_iterative, project
from .randomness import Randomness, normal_like, uniform_like
from .registry import register_attack


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR (Croce & Hein 2020, eq. 6): -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), per sample."""
    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, got {logits.shape[1]}")
    top = logits.topk(3, dim=1).values                                   # (N, 3) sorted
    z_y = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], -float("inf")).amax(dim=1)
    return -(z_y - others) / (top[:, 0] - top[:, 2] + 1e-12)


def dlr_targeted_loss(logits: torch.Tensor, targets: torch.Tensor,
                      labels: torch.Tensor | None = None) -> torch.Tensor:
    """Targeted DLR (Croce & Hein 2020, eq. 7): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), per sample.

    Without `labels`, z_y is the largest logit other than the target's (the class to overtake).
    """
    if logits.shape[1] < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, got {logits.shape[1]}")
    top = logits.topk(4, dim=1).values                                   # (N, 4) sorted
    z_t = logits.gather(1, targets[:, None]).squeeze(1)
    if labels is None:
        z_y = logits.scatter(1, targets[:, None], -float("inf")).amax(dim=1)
    else:
        z_y = logits.gather(1, labels[:, None]).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


# (logits (N, K), true labels or None, targets or None) -> (N,) loss APGD ascends; targets given = targeted
ApgdLoss = Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor | None], torch.Tensor]
_LOSSES: Registry[ApgdLoss] = Registry("APGD loss")


def register_apgd_loss(name: str) -> Callable[[ApgdLoss], ApgdLoss]:
    """Decorator: make `fn(logits, labels, targets)` APGD's loss `name` (`APGD(..., loss=name)`)."""
    return lambda fn: _LOSSES.add(name, fn)


def apgd_losses() -> list[str]:
    """The loss names APGD accepts."""
    return _LOSSES.names()


@register_apgd_loss("ce")
def ce_objective(logits: torch.Tensor, labels: torch.Tensor | None, targets: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy: ascended away from the label, or descended towards the target (APGD-CE)."""
    if targets is not None:
        return -nn.functional.cross_entropy(logits, targets, reduction="none")
    assert labels is not None
    return nn.functional.cross_entropy(logits, labels, reduction="none")


@register_apgd_loss("dlr")
def dlr_objective(logits: torch.Tensor, labels: torch.Tensor | None, targets: torch.Tensor | None) -> torch.Tensor:
    """DLR (eq. 6), or targeted DLR (eq. 7) with z_y the label's logit when known (APGD-DLR, APGD-T)."""
    if targets is not None:
        return dlr_targeted_loss(logits, targets, labels)
    assert labels is not None
    return dlr_loss(logits, labels)


def checkpoints(steps: int) -> list[int]:
    """Iterations at which APGD may halve its step: w_j = ceil(p_j N), p_0 = 0, p_1 = 0.22,
    p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (Croce & Hein 2020, Sec. 3.2)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * steps) for q in p[1:] if 0 < math.ceil(q * steps) < steps})


@register_attack("apgd-ce", loss="ce", examples=({"eps": 0.1, "steps": 5},))
@register_attack("apgd-dlr", loss="dlr", examples=({"eps": 0.1, "steps": 5},))
class APGD(Attack):
    """Auto-PGD: PGD with momentum and a step size halved at checkpoints when progress stalls.

    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", arXiv:2003.01690, Algorithm 1: step eta = 2 eps at start; momentum
    alpha = 0.75; at checkpoints w_j (see `checkpoints`) eta is halved and the iterate reset to the
    best point when fewer than rho * (w_j - w_{j-1}) steps increased the loss, or when neither eta
    nor the best loss changed since the last checkpoint. A sample leaves the batch as soon as it
    succeeds (that iterate is returned); otherwise its highest-loss point over all restarts is.

    Norm: "linf" (default) or "l2". Losses by name (`apgd_losses()`): "ce" (APGD-CE) or "dlr" (APGD-DLR; when
    targeted, the targeted DLR loss with z_y = largest non-target logit); `register_apgd_loss` adds one. Restarts
    run only on samples not yet broken.

    Args:
        eps: radius of the threat model's ball.
        steps: iterations per restart (default 100, the paper's).
        norm: "linf" or "l2" (default "linf").
        loss: a registered loss name, "ce" or "dlr" (default "ce"); anything else is an error naming the choices.
        restarts: random restarts (default 1).
        rho: checkpoint condition threshold (default 0.75).
        momentum: alpha (default 0.75).
        targeted: reach `targets` (CE descended or targeted DLR ascended) (default False).
        generator: torch.Generator for the random starts (default None: global RNG), or `ImageStreams` (per image).
        channels_last: run conv weights in channels_last format (default False).

    Shapes: images (N, C, H, W) in [0, 1], labels (N,) int64 -> AttackResult.

    Example:
        >>> result = APGD(eps=0.3, steps=100, loss="ce")(model, x, y)
        >>> robust_accuracy = 1 - result.success_rate
    """

    def __init__(self, eps: float, steps: int = 100, *, norm: str = "linf", loss: str = "ce", restarts: int = 1,
                 rho: float = 0.75, momentum: float = 0.75, targeted: bool = False,
                 generator: Randomness = None, channels_last: bool = False) -> None:
        check_iterative("APGD", norm, eps, steps=steps, restarts=restarts)
        check_choice("loss", loss, apgd_losses())
        check_number("rho", rho, low=0.0, high=1.0, low_open=True, high_open=True)
        check_number("momentum", momentum, low=0.0, high=1.0)
        self.eps = eps
        self.steps = steps
        self.norm = norm
        self.loss = loss
        self.restarts = restarts
        self.rho = rho
        self.momentum = momentum
        self.targeted = targeted
        self.generator = generator
        self.channels_last = channels_last

    def run(self, model: nn.Module, images: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        if self.targeted:
            return self._restarts(model, images, None, goal)
        return self._restarts(model, images, goal, None)

    def _restarts(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
                  targets: torch.Tensor | None) -> torch.Tensor:
        """Best of `restarts` runs, each on the samples no earlier run broke."""
        n = images.shape[0]
        best = images.clone()
        best_loss = torch.full((n,), -float("inf"), device=images.device)
        done = torch.zeros(n, dtype=torch.bool, device=images.device)
        for _ in range(self.restarts):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            adv, loss, ok = self._one_run(model, images[idx], None if labels is None else labels[idx],
                                          None if targets is None else targets[idx])
            better = ok | (loss > best_loss[idx])
            best[idx[better]], best_loss[idx[better]] = adv[better], loss[better]
            done[idx[ok]] = True
        return best

    def _succeeded(self, logits: torch.Tensor, labels: torch.Tensor | None,
                   targets: torch.Tensor | None) -> torch.Tensor:
        goal = labels if labels is not None else targets
        assert goal is not None
        return attack_success(logits.argmax(dim=1), goal, targeted=labels is None)

    def _one_run(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
                 targets: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One APGD run: (adversarial images, their loss, success) per sample."""
        n, dev = images.shape[0], images.device
        out = images.clone()
        out_loss = torch.full((n,), -float("inf"), device=dev)
        out_ok = torch.zeros(n, dtype=torch.bool, device=dev)
        marks, objective = set(checkpoints(self.steps)), _LOSSES.get(self.loss)
        idx = torch.arange(n, device=dev)                               # rows still running
        x, y, t = images, labels, targets
        cur = self._random_start(images)
        prev = cur
        x_best, f_best = cur.clone(), torch.full((n,), -float("inf"), device=dev)
        f_last = torch.full((n,), -float("inf"), device=dev)           # loss at the previous iterate
        eta = torch.full((n,), 2 * self.eps, device=dev)
        eta_mark, f_best_mark = eta.clone(), f_best.clone()            # values at the last checkpoint
        increases = torch.zeros(n, device=dev)
        last_mark = 0
        for k in range(self.steps + 1):
            a = cur.detach().requires_grad_(k < self.steps)
            with torch.enable_grad() if k < self.steps else torch.no_grad():
                logits = model(a)
                f = objective(logits, y, t)
                grad = torch.autograd.grad(f.sum(), a)[0] if k < self.steps else None
            with torch.no_grad():
                f = f.detach()
                ok = self._succeeded(logits, y, t)
                if k > 0:
                    increases += (f > f_last).float()
                improved = f > f_best
                x_best[improved], f_best[improved] = cur[improved], f[improved]
                f_last = f
                # record: successes leave the batch; the rest keep their best point so far
                rows = idx[ok]
                out[rows], out_loss[rows], out_ok[rows] = cur[ok], f[ok], True
                out[idx[~ok]], out_loss[idx[~ok]] = x_best[~ok], f_best[~ok]
                if grad is None:
                    break
                z = project(cur + eta.view(-1, *[1] * (cur.ndim - 1)) * self._direction(grad), x,
                            self.eps, self.norm)
                if k == 0:
                    nxt = z
                else:
                    nxt = project(cur + self.momentum * (z - cur) + (1 - self.momentum) * (cur - prev), x,
                                  self.eps, self.norm)
                prev = cur
                if k in marks:                      # checkpoint w_j = k, judged on f(x_1..x_k)
                    stalled = increases < self.rho * (k - last_mark)
                    frozen = (eta == eta_mark) & (f_best == f_best_mark)
                    reduce = stalled | frozen
                    eta_mark, f_best_mark = eta.clone(), f_best.clone()
                    eta = torch.where(reduce, eta / 2, eta)
                    nxt[reduce] = x_best[reduce]
                    prev = torch.where(reduce.view(-1, *[1] * (cur.ndim - 1)), x_best, prev)
                    increases.zero_()
                    last_mark = k
                cur = nxt
                if ok.any():
                    keep = ~ok
                    if not keep.any():
                        break
                    idx, x, cur, prev, x_best = idx[keep], x[keep], cur[keep], prev[keep], x_best[keep]
                    f_best, f_last, eta = f_best[keep], f_last[keep], eta[keep]
                    eta_mark, f_best_mark, increases = eta_mark[keep], f_best_mark[keep], increases[keep]
                    y = None if y is None else y[keep]
                    t = None if t is None else t[keep]
        return out, out_loss, out_ok

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        return ascent_direction(grad, self.norm)

    def _random_start(self, images: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            noise = uniform_like(images, self.generator) * 2 - 1   # U(-1, 1)
        else:
            noise = normal_like(images, self.generator)
            noise = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (images.ndim - 1))
        return project(images + self.eps * noise, images, self.eps, self.norm)


@register_attack("apgdt", targeted=(False,), examples=({"eps": 0.1, "steps": 5, "n_target_classes": 3},))
class APGDT(APGD):
    """APGD-T: untargeted threat model, broken by targeted-DLR APGD toward each of the top classes.

    Croce & Hein 2020 (arXiv:2003.01690), Sec. 4, as used in AutoAttack: for r = 2..n_target_classes+1,
    the target is the r-th highest clean logit; each round attacks only the samples not yet
    misclassified, with the targeted DLR loss (true label's logit as z_y). Success = misclassified.

    Args: as `APGD` (no `loss`, never targeted) plus n_target_classes (default 9).
    Shapes as `APGD`. Example:
        >>> result = APGDT(eps=0.3, steps=100, n_target_classes=9)(model, x, y)
        >>> robust = ~result.success
    """

    def __init__(self, eps: float, steps: int = 100, *, norm: str = "linf", n_target_classes: int = 9,
                 restarts: int = 1, rho: float = 0.75, momentum: float = 0.75,
                 generator: Randomness = None, channels_last: bool = False) -> None:
        super().__init__(eps, steps, norm=norm, loss="dlr", restarts=restarts, rho=rho, momentum=momentum,
                         targeted=False, generator=generator, channels_last=channels_last)
        check_count("n_target_classes", n_target_classes)
        self.n_target_classes = n_target_classes

    def run(self, model: nn.Module, images: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            logits = model(images)
        ranked = logits.argsort(dim=1, descending=True)                  # (N, K)
        best = images.clone()
        done = attack_success(logits.argmax(dim=1), goal)
        best_loss = torch.full((images.shape[0],), -float("inf"), device=images.device)
        for r in range(1, min(self.n_target_classes + 1, logits.shape[1])):
            idx = (~done).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            targets = ranked[idx, r]          # never the label: those samples are correctly classified
            for _ in range(self.restarts):
                adv, loss, ok = self._one_run(model, images[idx], goal[idx], targets)
                ok = ok.clone()
                with torch.no_grad():
                    ok &= attack_success(model(adv).argmax(dim=1), goal[idx])
                better = ok | (loss > best_loss[idx])
                best[idx[better]], best_loss[idx[better]] = adv[better], loss[better]
                done[idx[ok]] = True
                idx, targets = idx[~ok], targets[~ok]
                if idx.numel() == 0:
                    break
        return best

    def _succeeded(self, logits: torch.Tensor, labels: torch.Tensor | None,
                   targets: torch.Tensor | None) -> torch.Tensor:
        assert labels is not None   # APGD-T is untargeted: `run` always passes the true labels
        return attack_success(logits.argmax(dim=1), labels)
