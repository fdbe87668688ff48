"""Jacobian-based Saliency Map Attack (Papernot et al. 2016)."""

from __future__ import annotations

import torch
from torch import nn

from ..validation import InputValidationError, check_number
from .base import Attack, attack_success
from .registry import register_attack


@register_attack("jsma", targeted=(True,), examples=({"gamma": 0.1},))
class JSMA(Attack):
    """JSMA: targeted L0 attack that changes the pair of input features with the highest saliency.

    Papernot et al., "The Limitations of Deep Learning in Adversarial Settings", arXiv:1511.07528,
    Algorithms 2-3 with the pairwise saliency map (eq. 10 adapted to pairs): for features p != q
    still in the search domain, a = d z_t/d x_p + d z_t/d x_q, b = sum_{j != t} (d z_j/d x_p + d z_j/d x_q);
    with theta > 0 pick the pair with a > 0, b < 0 maximising a * |b| (theta < 0: a < 0, b > 0), add
    theta to both (clipped to [0, 1]) and drop them from the domain once at the bound. Derivatives
    are of the logits z (two backward passes per step: z_t and sum_j z_j). A sample stops when it
    reaches its target, when no admissible pair is left, or after floor(gamma * features / 2) steps,
    so at most gamma of its features change. Features are the C*H*W pixel values.

    Norm: "l0" (number of changed features). Always targeted.

    Args:
        theta: change applied to each chosen feature (default +1.0: set to white).
        gamma: maximum fraction of features changed (default 0.1, the paper's 14.5% bound
            being a result, not a setting).
        chunk_elements: cap on the (batch x features x features) pair scores held at once
            (default 2**23, ~32 MB per float32 buffer); only memory, never results, depends on it.
        channels_last: run conv weights in channels_last format (default False).

    Shapes: images (N, C, H, W) in [0, 1], labels and targets (N,) int64 -> AttackResult (norms: L0).

    Example:
        >>> result = JSMA(theta=1.0, gamma=0.1)(model, x, y, targets=(y + 1) % 10)
        >>> assert (result.norms <= 0.1 * x[0].numel()).all()
    """

    norm = "l0"
    targeted = True

    def __init__(self, *, theta: float = 1.0, gamma: float = 0.1, chunk_elements: int = 1 << 23,
                 channels_last: bool = False) -> None:
        if check_number("theta", theta, low=-1.0, high=1.0) == 0:
            raise InputValidationError("theta", "must be a non-zero change in [-1, 1], got 0")
        check_number("gamma", gamma, low=0.0, high=1.0, low_open=True)
        self.theta = theta
        self.gamma = gamma
        self.chunk_elements = chunk_elements
        self.channels_last = channels_last

    def run(self, model: nn.Module, images: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        shape = images.shape[1:]
        adv = images.flatten(1).clone()                                  # (N, F)
        n_features = adv.shape[1]
        domain = adv < 1 if self.theta > 0 else adv > 0                  # (N, F) features still free
        idx = torch.arange(adv.shape[0], device=adv.device)             # samples still running
        for _ in range(int(n_features * self.gamma) // 2):
            a = adv[idx].view(-1, *shape).requires_grad_(True)
            logits = model(a)
            t = goal[idx]
            running = ~attack_success(logits.argmax(dim=1), t, self.targeted)
            grad_t, = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), a, retain_graph=True)
            grad_all, = torch.autograd.grad(logits.sum(), a)
            with torch.no_grad():
                alpha = grad_t.flatten(1)                                # (B, F)
                beta = grad_all.flatten(1) - alpha                       # (B, F)
                p, q, found = self._best_pairs(alpha, beta, domain[idx])
                running &= found
                rows, p, q = idx[running], p[running], q[running]
                for feat in (p, q):
                    adv[rows, feat] = (adv[rows, feat] + self.theta).clamp(0, 1)
                    at_bound = adv[rows, feat] >= 1 if self.theta > 0 else adv[rows, feat] <= 0
                    domain[rows[at_bound], feat[at_bound]] = False
                idx = rows
            if idx.numel() == 0:
                break
        return adv.view(-1, *shape)

    def _best_pairs(self, alpha: torch.Tensor, beta: torch.Tensor,
                    domain: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per sample the admissible pair (p, q) with the highest saliency, and whether one exists."""
        b, f = alpha.shape
        ps, qs, found = [], [], []
        off_diag = ~torch.eye(f, dtype=torch.bool, device=alpha.device)  # (F, F)
        step = max(1, self.chunk_elements // (f * f))
        for i in range(0, b, step):
            al, be, dom = alpha[i:i + step], beta[i:i + step], domain[i:i + step]
            pair_a = al[:, :, None] + al[:, None, :]                     # (b, F, F)
            pair_b = be[:, :, None] + be[:, None, :]                     # (b, F, F)
            ok = (pair_a > 0) & (pair_b < 0) if self.theta > 0 else (pair_a < 0) & (pair_b > 0)
            ok &= dom[:, :, None] & dom[:, None, :] & off_diag
            score = torch.where(ok, -pair_a * pair_b, torch.full_like(pair_a, -1.0))
            best = score.flatten(1).argmax(dim=1)                        # (b,)
            ps.append(best // f)
            qs.append(best % f)
            found.append(ok.flatten(1).any(dim=1))
        return torch.cat(ps), torch.cat(qs), torch.cat(found)
