"""LAD's attention SVM (Zhou et al., Section III-B a): the boundary whose normal guides latent perturbations.

alpha = tanh(conv(z)) (a 1-D convolution sliding over the D latent features), beta = softmax(alpha)
over the D features, z_att = beta * z, and a linear SVM (hinge loss, L2 penalty on w) on z_att, all
trained jointly in torch by full-batch Adam on a few labelled latents (the paper: 20-200).

Scaling: beta sums to 1, so beta ~ 1/D; the SVM reads D * beta * z, which is z itself under uniform
attention, so w and its penalty keep their usual scale for any D. The boundary normal d is w / ||w||.

eps units (`eps_scale`; TargetBoundaries adds "classifier", the default of the experiments): "latent" makes the step eps * D * beta * d, a distance in raw latent units, which
means different things for differently trained classifiers. "margin" (the default) divides by the
fitted `step_scale_`, so that eps = `boundary_eps` (10) moves the median source-class fitting latent onto
the hyperplane (found by bisection along the step): eps is then comparable across models, and the
paper's range 0.1-20 spans "barely moved" to "twice the typical distance to the boundary", matching its
Fig. 6 (crossing near eps 9-11) and Fig. 5 (~100% success at 20). See docs/lad.md.

Beyond the paper's one boundary between a source and a target class, :class:`TargetBoundaries` fits
one attention SVM per (source, target) pair (or per target, one-vs-rest), so any image can be pushed
toward every other class.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from itertools import permutations
from typing import Any

import torch
from torch.nn import functional as F

from .._io import load_tensors, save_tensors
from .._seed import seed_everything

EPS_SCALES = ("margin", "latent")           # what an AttentionSVM can set on its own
BOUNDARY_EPS_SCALES = (*EPS_SCALES, "classifier")  # TargetBoundaries can also ask the classifier


def median_crossing(beyond: Callable[[torch.Tensor], torch.Tensor], n: int) -> torch.Tensor:
    """Median over n samples of the smallest eps >= 0 with beyond(eps) true (bisection on a monotone-ish
    test; `beyond` maps per-sample eps (n,) to a bool mask). Samples that never get there are left out."""
    hi = torch.ones(n)
    for _ in range(60):                       # grow until every sample is past (or give up)
        short = ~beyond(hi)
        if not short.any():
            break
        hi = torch.where(short, 2 * hi, hi)
    lo = torch.zeros_like(hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        past = beyond(mid)
        hi, lo = torch.where(past, mid, hi), torch.where(past, lo, mid)
    reached = beyond(hi)
    return hi[reached].median() if reached.any() else torch.tensor(1.0)


def _check_latents(z: torch.Tensor, n_features: int | None = None) -> None:
    if z.ndim != 2:
        raise ValueError(f"latents must be (N, D), got shape {tuple(z.shape)}")
    if not z.is_floating_point():
        raise TypeError(f"latents must be floating point, got {z.dtype}")
    if torch.isnan(z).any():
        raise ValueError("latents contain NaN")
    if n_features is not None and z.shape[1] != n_features:
        raise ValueError(f"latents have {z.shape[1]} features, the estimator was fitted on {n_features}")


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """Run tiny full-batch fits on one thread: on a shared CPU, thread hand-offs cost ~10x the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class AttentionSVM:
    """Binary linear SVM on attended latents; classes_[1] is the target (positive side of the boundary).

    Parameters: kernel_size (odd, the attention conv's width), l2 (penalty lambda/2 ||w||^2), epochs and
    lr of full-batch Adam, seed, eps_scale ("margin" or "latent") and boundary_eps (the eps at which the
    median source latent reaches the boundary, for "margin"). Learned: classes_, conv_weight_, conv_bias_,
    coef_, intercept_, boundary_normal_ (unit, from classes_[0] toward classes_[1]), step_scale_ (latent
    units per eps), n_features_in_.
    """

    def __init__(self, *, kernel_size: int = 3, l2: float = 1e-3, epochs: int = 300, lr: float = 0.01,
                 seed: int = 0, eps_scale: str = "margin", boundary_eps: float = 10.0) -> None:
        self.kernel_size = kernel_size
        self.l2 = l2
        self.epochs = epochs
        self.lr = lr
        self.seed = seed
        self.eps_scale = eps_scale
        self.boundary_eps = boundary_eps

    def _alpha(self, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # 1-D convolution as a matmul: (N, D + k - 1) -> windows (N, D, k) -> (N, D); avoids per-shape conv setup
        windows = F.pad(z, (self.kernel_size // 2, self.kernel_size // 2)).unfold(1, self.kernel_size, 1)
        return torch.tanh(windows @ weight + bias)

    def _scores(self, z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, coef: torch.Tensor,
                intercept: torch.Tensor) -> torch.Tensor:
        beta = torch.softmax(self._alpha(z, weight, bias), dim=1)
        return (z.shape[1] * beta * z) @ coef + intercept  # (N,)

    def fit(self, z: torch.Tensor, y: torch.Tensor) -> "AttentionSVM":
        """Train attention and SVM jointly on latents z (N, D) with exactly two labels in y (N,)."""
        _check_latents(z)
        if self.kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd to keep D features, got {self.kernel_size}")
        if self.eps_scale not in EPS_SCALES or self.boundary_eps <= 0:
            raise ValueError(f"eps_scale must be one of {EPS_SCALES} and boundary_eps > 0, got "
                             f"{self.eps_scale!r}, {self.boundary_eps}")
        classes = torch.unique(y)
        if classes.numel() != 2 or y.shape != (z.shape[0],):
            raise ValueError(f"fit needs y of shape ({z.shape[0]},) with exactly two classes, got "
                             f"{classes.tolist()} and shape {tuple(y.shape)}")
        gen = seed_everything(self.seed)
        z = z.detach().float()
        sign = torch.where(y == classes[1], 1.0, -1.0)
        weight = (0.01 * torch.randn(self.kernel_size, generator=gen)).requires_grad_()
        bias = torch.zeros(1, requires_grad=True)
        coef = torch.zeros(z.shape[1], requires_grad=True)
        intercept = torch.zeros((), requires_grad=True)
        opt = torch.optim.Adam([weight, bias, coef, intercept], lr=self.lr)
        with _single_thread():
            for _ in range(self.epochs):
                margins = sign * self._scores(z, weight, bias, coef, intercept)
                loss = F.relu(1 - margins).mean() + 0.5 * self.l2 * coef.pow(2).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
        if not torch.isfinite(coef).all():
            raise FloatingPointError("attention SVM weights became non-finite; lower lr")
        self.classes_ = classes
        self.n_features_in_ = z.shape[1]
        self.conv_weight_, self.conv_bias_ = weight.detach(), bias.detach()
        self.coef_, self.intercept_ = coef.detach(), intercept.detach()
        norm = self.coef_.norm()
        if norm == 0:
            raise ValueError("attention SVM learned w = 0 (no boundary); check the labels and l2")
        self.boundary_normal_ = self.coef_ / norm
        self.step_scale_ = torch.tensor(1.0)
        if self.eps_scale == "margin":
            self.fit_step_scale(z[sign < 0], lambda moved: self.decision_function(moved) > 0)
        return self

    def _unit_step(self, z: torch.Tensor) -> torch.Tensor:
        """D * beta(z) * d (N, D): the step for eps = 1 before step_scale_."""
        return self.n_features_in_ * self.attention(z) * self.boundary_normal_

    def fit_step_scale(self, z: torch.Tensor, crossed: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Set step_scale_ so that eps = boundary_eps takes the median of latents z to where `crossed`
        (moved latents -> bool mask) first holds: the SVM's boundary ("margin") or the classifier's flip."""
        step = self._unit_step(z)
        self.step_scale_ = median_crossing(lambda eps: crossed(z + eps[:, None] * step), z.shape[0]) / self.boundary_eps

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise RuntimeError("AttentionSVM is not fitted; call fit(z, y) first")

    def attention(self, z: torch.Tensor) -> torch.Tensor:
        """beta (N, D): positive, each row sums to 1; how much each latent feature matters per sample."""
        self._check_fitted()
        _check_latents(z, self.n_features_in_)
        return torch.softmax(self._alpha(z.float(), self.conv_weight_, self.conv_bias_), dim=1)

    def decision_function(self, z: torch.Tensor) -> torch.Tensor:
        """Signed SVM score (N,); > 0 means classes_[1] (the target side)."""
        self._check_fitted()
        _check_latents(z, self.n_features_in_)
        return self._scores(z.float(), self.conv_weight_, self.conv_bias_, self.coef_, self.intercept_)

    def predict(self, z: torch.Tensor) -> torch.Tensor:
        """classes_[1] where the score is positive, else classes_[0]."""
        return torch.where(self.decision_function(z) > 0, self.classes_[1], self.classes_[0])

    def direction(self, z: torch.Tensor) -> torch.Tensor:
        """step_scale_ * D * beta * d (N, D): the per-sample step of LAD's z' = z + eps * beta * d (see docs/lad.md)."""
        return self.step_scale_ * self._unit_step(z)


class TargetBoundaries:
    """Attention SVMs toward every target class: strategy "pairwise" fits one per (source, target)
    pair (the paper's two-class boundary, for all pairs); "one_vs_rest" one per target (target vs rest).

    eps_scale "classifier" (needs `head` in fit: the classifier from the latent layer on, z -> logits)
    sets each boundary's eps unit so that eps = boundary_eps takes the median fitting latent of the source
    class to where the classifier itself stops predicting that class; "margin" and "latent" are as in
    AttentionSVM.

    Learned: classes_, estimators_ {(source, target): AttentionSVM}, with source = -1 for one-vs-rest.
    """

    def __init__(self, *, strategy: str = "pairwise", kernel_size: int = 3, l2: float = 1e-3, epochs: int = 300,
                 lr: float = 0.01, seed: int = 0, eps_scale: str = "margin", boundary_eps: float = 10.0) -> None:
        self.strategy = strategy
        self.kernel_size = kernel_size
        self.l2 = l2
        self.epochs = epochs
        self.lr = lr
        self.seed = seed
        self.eps_scale = eps_scale
        self.boundary_eps = boundary_eps

    def _svm(self) -> AttentionSVM:
        own_scale = "margin" if self.eps_scale == "classifier" else self.eps_scale  # then recalibrated in fit
        return AttentionSVM(kernel_size=self.kernel_size, l2=self.l2, epochs=self.epochs, lr=self.lr, seed=self.seed,
                            eps_scale=own_scale, boundary_eps=self.boundary_eps)

    def fit(self, z: torch.Tensor, y: torch.Tensor,
            head: Callable[[torch.Tensor], torch.Tensor] | None = None) -> "TargetBoundaries":
        """Fit every boundary from labelled latents z (N, D), y (N,) covering at least two classes
        (`head`, latents -> logits, is needed for eps_scale "classifier")."""
        _check_latents(z)
        if self.eps_scale not in BOUNDARY_EPS_SCALES:
            raise ValueError(f"eps_scale must be one of {BOUNDARY_EPS_SCALES}, got {self.eps_scale!r}")
        if self.eps_scale == "classifier" and head is None:
            raise ValueError("eps_scale='classifier' needs head=, the classifier from the latent layer on")
        classes = [int(c) for c in torch.unique(y)]
        if len(classes) < 2:
            raise ValueError(f"need latents of at least two classes, got {classes}")
        estimators: dict[tuple[int, int], AttentionSVM] = {}
        if self.strategy == "pairwise":
            for source, target in permutations(classes, 2):
                keep = (y == source) | (y == target)
                estimators[(source, target)] = self._svm().fit(z[keep], (y[keep] == target).long())
        elif self.strategy == "one_vs_rest":
            for target in classes:
                estimators[(-1, target)] = self._svm().fit(z, (y == target).long())
        else:
            raise ValueError(f"unknown strategy {self.strategy!r}; use 'pairwise' or 'one_vs_rest'")
        self.classes_ = classes
        self.estimators_ = estimators
        if head is not None and self.eps_scale == "classifier":
            self._calibrate_to(head, z, y)
        return self

    @torch.no_grad()
    def _calibrate_to(self, head: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, y: torch.Tensor) -> None:
        """step_scale_ per boundary: median eps (latent units) at which head() stops predicting the source."""
        for (source, target), est in self.estimators_.items():
            rows = (y == source) if source >= 0 else (y != target)
            zs, ys = z[rows].float(), y[rows]
            est.fit_step_scale(zs, lambda moved: head(moved).argmax(1) != ys)

    def estimator(self, source: int, target: int) -> AttentionSVM:
        """The boundary used to push class `source` toward class `target`."""
        if not hasattr(self, "estimators_"):
            raise RuntimeError("TargetBoundaries is not fitted; call fit(z, y) first")
        key = (-1 if self.strategy == "one_vs_rest" else source, target)
        if key not in self.estimators_ or source == target:
            raise KeyError(f"no boundary from class {source} to class {target}; classes are {self.classes_}")
        return self.estimators_[key]

    def _per_pair(self, z: torch.Tensor, sources: torch.Tensor, targets: torch.Tensor,
                  fn: Callable[[AttentionSVM, torch.Tensor], torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
        """Apply fn(estimator, z_rows) to the rows of each (source, target) pair."""
        if sources.shape != (z.shape[0],) or targets.shape != (z.shape[0],):
            raise ValueError(f"sources and targets must be ({z.shape[0]},), got {tuple(sources.shape)}, "
                             f"{tuple(targets.shape)}")
        out = torch.empty(shape)
        for source, target in torch.unique(torch.stack([sources, targets], dim=1), dim=0).tolist():
            rows = (sources == source) & (targets == target)
            out[rows] = fn(self.estimator(source, target), z[rows])
        return out

    def direction(self, z: torch.Tensor, sources: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Per-sample step D * beta * d (N, D) toward targets[i] from sources[i]."""
        return self._per_pair(z, sources, targets, AttentionSVM.direction, tuple(z.shape))

    def target_scores(self, z: torch.Tensor, sources: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each sample's score on its own (source, target) boundary (N,); higher = further toward target."""
        return self._per_pair(z, sources, targets, AttentionSVM.decision_function, (z.shape[0],))

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Learned state as named tensors, for `_io.save_tensors` (the settings go in its metadata)."""
        out: dict[str, torch.Tensor] = {}
        for (source, target), est in self.estimators_.items():
            for name in ("classes_", "conv_weight_", "conv_bias_", "coef_", "intercept_", "step_scale_"):
                out[f"{source}:{target}:{name}"] = getattr(est, name)
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], **params: Any) -> "TargetBoundaries":
        """Rebuild fitted boundaries saved by `to_tensors` with the same settings."""
        self = cls(**params)
        estimators: dict[tuple[int, int], AttentionSVM] = {}
        for key, value in tensors.items():
            source, target, name = key.split(":")
            est = estimators.setdefault((int(source), int(target)), self._svm())
            setattr(est, name, value)
        for est in estimators.values():
            if not hasattr(est, "step_scale_"):
                est.step_scale_ = torch.tensor(1.0)  # files from before eps scaling were in latent units
            est.n_features_in_ = int(est.coef_.shape[0])
            est.boundary_normal_ = est.coef_ / est.coef_.norm()
        self.estimators_ = estimators
        self.classes_ = sorted({t for _, t in estimators} | {s for s, _ in estimators if s >= 0})
        return self


_PARAMS = ("strategy", "kernel_size", "l2", "epochs", "lr", "seed", "eps_scale", "boundary_eps")


def save_boundaries(path: str | os.PathLike[str], boundaries: TargetBoundaries,
                    metadata: dict[str, Any] | None = None) -> None:
    """Fitted boundaries as safetensors, their settings (and e.g. the fit images' indices) as metadata."""
    params = {name: getattr(boundaries, name) for name in _PARAMS}
    save_tensors(path, boundaries.to_tensors(), {"params": params, **(metadata or {})})


def load_boundaries(path: str | os.PathLike[str]) -> tuple[TargetBoundaries, dict[str, Any]]:
    """(boundaries, metadata) from a file written by `save_boundaries`."""
    tensors, meta = load_tensors(path)
    if "params" not in meta:
        raise ValueError(f"{path}: not a LAD boundaries file (no 'params' in its metadata)")
    params = {"eps_scale": "latent", **meta["params"]}  # files without eps_scale predate "margin"
    return TargetBoundaries.from_tensors(tensors, **params), meta
