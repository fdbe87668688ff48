"""Square attack, L-inf: random search with square-shaped updates, no gradients (Andriushchenko et al. 2020);
on F alone (`Square`) and on F + a detector (`DetectorSquare`, judged by the detector's own decision)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..validation import check_count, check_number
from .base import Attack, margin
from .detector_aware import DetectorAttack, KeepBest
from .randomness import ImageStreams, Randomness, image_keys
from .registry import InEvaluation, register_attack

# (candidate images (R, C, H, W), their rows in the batch (R,)) -> loss (R,), success where < 0
SearchLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def square_fraction(p_init: float, query: int, queries: int) -> float:
    """The schedule of p (fraction of pixels changed), halved at the paper's checkpoints of a 10,000-query
    run rescaled to `queries` (authors' code, `p_selection`)."""
    it = int(query / queries * 10000)
    halvings = sum(it > mark for mark in (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000))
    return p_init / 2 ** halvings


@register_attack("square", targeted=(False,), examples=({"eps": 0.1, "queries": 20},))
class Square(Attack):
    """Square attack, L-inf, untargeted: score-based random search, never a gradient.

    Andriushchenko, Croce, Flammarion, Hein, "Square Attack: a query-efficient black-box adversarial attack
    via random search", arXiv:1912.00049, Algorithm 1 with the L-inf proposal (Sec. 3.1): start from vertical
    stripes of +-eps; at each query pick, per image, a random square of side s = round(sqrt(p H W)) (p from
    `square_fraction`) and set it to +-eps per channel (a fresh random sign, flipped if it would leave the
    square as it is); keep the proposal if the margin loss f_y - max_{i != y} f_i decreases. An image stops as
    soon as it is misclassified. Runs under `torch.no_grad`, so it sees only the model's outputs: the
    gradient-masking check of an evaluation (AutoAttack's last attack).

    Norm "linf". Args: eps; queries (default 5000, per image per restart); p_init (0.8, AutoAttack's setting
    for L-inf); restarts (1, only on images not yet broken); generator.
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) int64 -> AttackResult.

    Example:
        >>> result = Square(eps=0.3, queries=5000)(model, x, y)
    """

    def __init__(self, eps: float, queries: int = 5000, *, p_init: float = 0.8, restarts: int = 1,
                 generator: Randomness = None) -> None:
        check_number("eps", eps, low=0.0)
        check_number("p_init", p_init, low=0.0, high=1.0, low_open=True)
        check_count("queries", queries)
        check_count("restarts", restarts)
        self.eps = eps
        self.queries = queries
        self.p_init = p_init
        self.restarts = restarts
        self.generator = generator

    @torch.no_grad()
    def run(self, model: nn.Module, images: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        best = images.clone()
        best_loss = margin(model(images), goal, targeted=False)
        for _ in range(self.restarts):
            rows = (best_loss >= 0).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            adv, loss = self.search(lambda x, r: margin(model(x), goal[rows[r]], targeted=False), images[rows])
            better = loss < best_loss[rows]
            best[rows[better]], best_loss[rows[better]] = adv[better], loss[better]
        return best

    @torch.no_grad()
    def search(self, loss_fn: SearchLoss, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One run of the random search minimising `loss_fn` (an image stops once its loss is < 0):
        (adversarial images, their loss)."""
        n, c, h, w = images.shape
        keys = image_keys(images) if isinstance(self.generator, ImageStreams) else None   # per-image streams
        stripes = self._signs(keys, (c, 1, w), n).to(images) * self.eps                            # (N, C, 1, W)
        adv = (images + stripes).clamp(0, 1)
        rows = torch.arange(n, device=images.device)                                     # images still running
        loss = loss_fn(adv, rows)
        ys, xs = torch.arange(h, device=images.device), torch.arange(w, device=images.device)
        for q in range(self.queries):
            rows = rows[loss[rows] >= 0]
            if rows.numel() == 0:
                break
            s = max(1, min(h - 1, round((square_fraction(self.p_init, q, self.queries) * h * w) ** 0.5)))
            active = None if keys is None else keys[rows.cpu()]
            top = self._randint(h - s + 1, active, len(rows)).to(images.device)
            left = self._randint(w - s + 1, active, len(rows)).to(images.device)
            inside = (((ys[None] >= top[:, None]) & (ys[None] < top[:, None] + s))[:, :, None]
                      & ((xs[None] >= left[:, None]) & (xs[None] < left[:, None] + s))[:, None, :])  # (R, H, W)
            inside = inside[:, None]                                                     # (R, 1, H, W)
            x0, cur = images[rows], adv[rows]
            value = self._signs(active, (c, 1, 1), len(rows)).to(images) * self.eps       # (R, C, 1, 1)
            same = (((x0 + value).clamp(0, 1) - cur).abs() < 1e-7) | ~inside            # (R, C, H, W)
            value = torch.where(same.flatten(1).all(1)[:, None, None, None], -value, value)
            proposal = torch.where(inside, (x0 + value).clamp(0, 1), cur)
            new_loss = loss_fn(proposal, rows)
            better = new_loss < loss[rows]
            adv[rows[better]], loss[rows[better]] = proposal[better], new_loss[better]
        return adv, loss

    def _signs(self, keys: torch.Tensor | None, shape: tuple[int, ...], n: int) -> torch.Tensor:
        """(n, *shape) of +-1: per image from `keys` when drawing from `ImageStreams`, else from the generator."""
        return self._randint(2, keys, n, shape).float() * 2 - 1

    def _randint(self, high: int, keys: torch.Tensor | None, n: int, shape: tuple[int, ...] = ()) -> torch.Tensor:
        if isinstance(self.generator, ImageStreams) and keys is not None:
            return self.generator.integers(high, keys, shape)
        assert not isinstance(self.generator, ImageStreams)
        return torch.randint(0, high, (n, *shape), generator=self.generator)


def _linf_only(detector: Any, threat: Any) -> str | None:
    return None if threat.norm == "linf" else "our Square is L-inf only"


def _square_settings(budget: Any) -> dict[str, Any]:
    return {"queries": budget.square_queries, "restarts": budget.square_restarts}


@register_attack("detector_square", on="detector", targeted=(False,), examples=({"eps": 0.1, "queries": 20},),
                 evaluation=InEvaluation(_linf_only, _square_settings, label="square", order=40, gradient=False,
                                         per_image_draws=True))
class DetectorSquare(DetectorAttack):
    """Square attack on F + detector: gradient-free, so it is the gradient-masking check of a detector evaluation.

    Andriushchenko et al., arXiv:1912.00049 (the L-inf random search of `Square`), with the loss: F's margin
    f_y - max_{i != y} f_i while F is right, plus, while the detector flags the input, 1 + how far its score is
    above the threshold (`detector.threshold_`, where the detector has one). The loss is below 0 exactly when F
    is wrong and the detector's own `predict` does not flag the input, the success of every detector attack.
    Only `predict` and `classifier` are used (no gradients, no surrogate). Keep-best by `predict` (`KeepBest`).

    Norm "linf". Args: eps; queries (5000 per image per restart); p_init (0.8); restarts (1, only on inputs not
    yet evading); generator.
    Shapes: images (N, C, H, W) in [0, 1], labels (N,) int64 -> AttackResult (success = evaded).

    Example:
        >>> result = DetectorSquare(eps=0.3, queries=1000)(detector, x, y)
    """

    def __init__(self, eps: float, queries: int = 5000, *, p_init: float = 0.8, restarts: int = 1,
                 generator: Randomness = None) -> None:
        self._store_threat_model(eps, None, queries, "linf", restarts, 1, generator)
        self.queries = queries
        self.p_init = p_init

    def evade(self, detector: Any, images: torch.Tensor, labels: torch.Tensor, best: KeepBest,
              starts: torch.Tensor | None) -> None:
        threshold = getattr(detector, "threshold_", None)
        search = Square(self.eps, self.queries, p_init=self.p_init, generator=self.generator)
        for _ in range(self.restarts):
            rows = (~best.evaded).nonzero().squeeze(1).to(images.device)
            if rows.numel() == 0:
                return

            def loss(x: torch.Tensor, r: torch.Tensor, rows: torch.Tensor = rows) -> torch.Tensor:
                m = margin(detector.classifier(x), labels[rows[r]], targeted=False)
                out = detector.predict(x)
                flagged = out.is_adversarial.to(m.device).bool()
                excess = (out.nonconformity.to(m) - threshold).clamp_min(0) if threshold is not None else 0.0
                return torch.where(flagged, m.clamp_min(0) + 1 + excess, m)
            adv, _ = search.search(loss, images[rows])
            best.update(adv, rows)
