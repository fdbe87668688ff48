"""What every attack shares: the threat model check, model-state hygiene, the result object, the success rule
(`attack_success`) and the batch loop every caller runs attacks through (`attack_in_batches`, `in_batches`)."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import torch
from torch import nn

from .._progress import track
from .randomness import Randomness, call_scope, uniform_like
from ..validation import InputValidationError, check_count, check_images, check_labels, check_number, model_dtype

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

    def select(self, rows: torch.Tensor) -> "AttackResult":
        """The rows picked by a mask or index."""
        return AttackResult(*(getattr(self, f.name)[rows] for f in fields(self)))

    @staticmethod
    def concat(parts: "Sequence[AttackResult]") -> "AttackResult":
        """One result holding all rows of `parts` (e.g. batches), in order, on CPU."""
        return AttackResult(*(torch.cat([getattr(p, f.name).cpu() for p in parts]) for f in fields(AttackResult)))


def attack_success(predictions: torch.Tensor, goal: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """(N,) bool, the one success rule of an attack on F: targeted, F predicts the target `goal`; untargeted, F
    predicts anything but the true label `goal` (an attack on F + detector adds "not flagged": `detectors.evaded`)."""
    return predictions == goal if targeted else predictions != goal


Batched = TypeVar("Batched", torch.Tensor, AttackResult)


def in_batches(fn: Callable[..., Batched], *tensors: torch.Tensor | None, batch_size: int,
               desc: str | None = None, device: torch.device | None = None) -> Batched:
    """`fn` over aligned row batches of `tensors` (a None passes as None), moved to `device` when given; the
    results in order on CPU (tensors concatenated, `AttackResult`s by `AttackResult.concat`). With `desc`, a
    progress bar. The batch loop of the experiments, the evaluation and the CLI; empty inputs make one call on the
    empty rows (AutoAttack's per-stage bookkeeping and LAD's GA search keep their own loops)."""
    check_count("batch_size", batch_size)
    n = next(len(t) for t in tensors if t is not None)

    def rows(t: torch.Tensor | None, i: int) -> torch.Tensor | None:
        if t is None:
            return None
        part = t[i:i + batch_size]
        return part if device is None else part.to(device)
    starts = range(0, n, batch_size)
    parts = [fn(*(rows(t, i) for t in tensors)) for i in (track(starts, desc) if desc else starts)]
    if not parts:
        parts = [fn(*(rows(t, 0) for t in tensors))]
    if isinstance(parts[0], AttackResult):
        return AttackResult.concat(parts)
    return torch.cat([part.cpu() for part in parts])


def attack_in_batches(model: nn.Module, attack: Callable[..., AttackResult], images: torch.Tensor,
                      labels: torch.Tensor, targets: torch.Tensor | None = None, batch_size: int = 256,
                      desc: str | None = None) -> AttackResult:
    """`attack(model, x, y[, t])` over batches of images (N, C, H, W), each on the model's device (targeted when
    `targets` is given); one `AttackResult` on CPU."""
    device = next((t.device for t in [*model.parameters(), *model.buffers()]), None)
    return in_batches(lambda x, y, t: attack(model, x, y) if t is None else attack(model, x, y, t),
                      images, labels, targets, batch_size=batch_size, desc=desc, device=device)


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


def check_iterative(attack: str, norm: str, eps: float, step_size: float | None = None, **counts: int) -> None:
    """Reject a norm other than L-inf/L2, an eps that is not finite and >= 0, a step size that is not finite
    and > 0 (>= 0 for the identity attack eps = 0), or a count (steps, restarts, ...) below 1, naming it."""
    if norm not in ("linf", "l2"):
        raise InputValidationError("norm", f"of {attack} must be 'linf' or 'l2', got {norm!r}")
    if check_number("eps", eps, low=0.0) and step_size is not None:
        check_number("step_size", step_size, low=0.0, low_open=True)
    elif step_size is not None:
        check_number("step_size", step_size, low=0.0)
    for name, value in counts.items():
        check_count(name, value)


def madry_step_size(eps: float, steps: int, step_size: float | None) -> float:
    """The given step size, else Madry et al.'s 2.5 * eps / steps."""
    return 2.5 * eps / steps if step_size is None else step_size


def project(adv: torch.Tensor, images: torch.Tensor, eps: float, norm: str, clip: bool = True) -> torch.Tensor:
    """Nearest point to `adv` inside the `norm` ball of radius `eps` around `images`, clipped to [0, 1] unless
    `clip` is False (cleverhans' default: clip_min/clip_max None, so pixels may leave the box).

    L-inf is exact; L2 rescales the perturbation then clips to the box (the usual approximation).
    """
    delta = adv - images
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    elif norm == "l2":
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (eps / norms).clamp(max=1.0).view(-1, *[1] * (delta.ndim - 1))
    else:
        raise ValueError(f"cannot project onto a {norm!r} ball; expected 'linf' or 'l2'")
    return (images + delta).clamp(0, 1) if clip else images + delta


def ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent unit step for a gradient (N, ...): its sign (L-inf) or the gradient over its L2 norm."""
    if norm == "linf":
        return grad.sign()
    if norm == "l2":
        return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.ndim - 1))
    raise ValueError(f"no steepest-ascent step for norm {norm!r}; expected 'linf' or 'l2'")


def random_start(images: torch.Tensor, eps: float, norm: str,
                 generator: Randomness = None, clip: bool = True) -> torch.Tensor:
    """A uniform point of the L-inf ball, or a random point of the L2 sphere, clipped to [0, 1] unless `clip` is False;
    `images` are the clean images (`ImageStreams` draws per image from them)."""
    noise = uniform_like(images, generator) * 2 - 1  # U(-1, 1)
    if norm == "l2":
        noise = noise / noise.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (images.ndim - 1))
    return project(images + eps * noise, images, eps, norm, clip)


def margin(logits: torch.Tensor, goal: torch.Tensor, targeted: bool) -> torch.Tensor:
    """Per-sample logit margin that is negative exactly when the attack has succeeded.

    Untargeted: z_label - max_{i != label} z_i. Targeted: max_{i != target} z_i - z_target.
    """
    goal_logit = logits.gather(1, goal[:, None]).squeeze(1)
    others = logits.scatter(1, goal[:, None], -float("inf")).amax(dim=1)
    return others - goal_logit if targeted else goal_logit - others


@contextlib.contextmanager
def channels_last_weights(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Run with 4-D (conv) weights in channels_last memory format; the original tensors are put back.

    Values never change and the original storages are left untouched (copies are swapped in), so
    optimisers and other references stay valid. On this CPU it made input-gradient passes of
    `dld_mnist`/`dld_svhn` about 1.5x faster, left `lenet5` unchanged and made `mnist_black` 2x
    slower, hence opt-in per attack (`channels_last=True`).
    """
    swapped: list[tuple[nn.Parameter, torch.Tensor]] = []
    if enabled:
        for p in model.parameters():
            if p.ndim == 4 and not p.is_contiguous(memory_format=torch.channels_last):
                swapped.append((p, p.data))
                p.data = p.data.contiguous(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        for p, data in swapped:
            p.data = data


@contextlib.contextmanager
def frozen_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode, no parameter gradients; both restored afterwards, whatever happens.

    Each submodule gets its own mode back: a wrapper in train mode around a frozen model in eval mode (an
    encoder being trained around F) must not switch F's batch-norm or dropout to training when an attack ends.
    """
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def check_inputs(images: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None,
                 targeted: bool, model: nn.Module | None = None) -> torch.Tensor:
    """Reject inputs no attack can sensibly use, naming what is wrong; the images, in the model's dtype.

    With `model`, labels and targets must also be classes it scores (`model_classes`).
    """
    images = check_images(images, shape=getattr(model, "input_shape", None),
                          dtype=None if model is None else model_dtype(model), allow_empty=True)
    num_classes = model_classes(model, images) if model is not None and len(images) else None
    check_labels(labels, images.shape[0], num_classes)
    if targeted and targets is None:
        raise InputValidationError("targets", "are required by a targeted attack: an int64 tensor shaped like labels")
    if not targeted and targets is not None:
        raise InputValidationError("targets", "given to an untargeted attack; build it with targeted=True")
    if targets is not None:
        check_labels(targets, images.shape[0], num_classes, name="targets")
        same = (targets.cpu() == labels.cpu()).nonzero().flatten()
        if len(same):   # "success" would be the model still predicting the true label
            raise InputValidationError("targets", f"equal the true label at {len(same)} image(s) (first: index "
                                       f"{int(same[0])}, class {int(labels[same[0]])}); a target must be another class")
    return images


def model_classes(model: nn.Module, images: torch.Tensor) -> int:
    """How many classes `model` scores: its `num_classes`, else the width of its logits on one image."""
    declared = getattr(model, "num_classes", None)
    if isinstance(declared, int) and declared > 0:
        return declared
    with torch.no_grad(), frozen_eval(model):
        logits = model(images[:1])
    if logits.ndim != 2:
        raise ValueError(f"model must return (N, classes) logits, got shape {tuple(logits.shape)}")
    return int(logits.shape[1])


class Attack:
    """Base class: subclasses set `norm` and `targeted` and implement `run`.

    The base owns the checks, model-state hygiene, the final success check and the norms; a
    subclass's constructor only stores its keyword arguments under the same names (so `params`
    can report them) and `run` does the work.
    """

    norm: str = "linf"
    targeted: bool = False
    channels_last: bool = False
    clip: bool = True  # outputs clipped to [0, 1]; PGD/FGSM take clip=False to leave the box (cleverhans' default)
    batch_size: int = 1024  # images per pass: a larger call is attacked in batches (set it on the instance)

    @property
    def params(self) -> dict[str, Any]:
        """Constructor arguments as JSON-friendly values (callables by name, generators as None)."""
        out: dict[str, Any] = {}
        for name in inspect.signature(type(self).__init__).parameters:
            if name == "self" or not hasattr(self, name):
                continue
            value = getattr(self, name)
            if isinstance(value, torch.Generator):
                value = None
            elif callable(value):
                value = getattr(value, "__name__", type(value).__name__)
            out[name] = value
        return out

    def describe(self) -> dict[str, Any]:
        """Threat model and settings as a dict: {"attack": class name, "norm", "targeted", **params}."""
        return {"attack": type(self).__name__, "norm": self.norm, "targeted": self.targeted, **self.params}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"

    def run(self, model: nn.Module, images: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        """Adversarial images for `goal` (true labels, or targets when targeted)."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 targets: torch.Tensor | None = None) -> AttackResult:
        images = check_inputs(images, labels, targets, self.targeted, model)
        return self._in_batches(lambda x, y, t: self._attack(model, x, y, t), images, labels, targets)

    def _in_batches(self, attack: Callable[..., AttackResult], images: torch.Tensor,
                    *aligned: torch.Tensor | None) -> AttackResult:
        """`attack(images, *aligned)` over rows of at most `batch_size`, results concatenated on the inputs' device:
        a 20,000-image call holds one batch of iterates and gradients at a time, not all of them."""
        size = check_count("batch_size", self.batch_size)
        if len(images) <= size:
            return attack(images, *aligned)
        parts = [attack(images[i:i + size], *(None if a is None else a[i:i + size] for a in aligned))
                 for i in range(0, len(images), size)]
        return AttackResult(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(AttackResult)))

    def _attack(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                targets: torch.Tensor | None) -> AttackResult:
        """One batch of checked inputs: `run`, then the clip, F's predictions, success and norms."""
        goal = targets if self.targeted else labels
        assert goal is not None
        if images.shape[0] == 0:
            empty = torch.zeros(0, device=images.device)
            return AttackResult(images.detach().clone(), empty.bool(), empty, labels.clone())
        with frozen_eval(model), channels_last_weights(model, self.channels_last), \
                call_scope(getattr(self, "generator", None), type(self).__name__):
            adv = self.run(model, images.detach().clone(), goal.detach().clone()).detach()
            adv = (adv.clamp(0, 1) if self.clip else adv).contiguous()
            with torch.no_grad():
                logits = model(adv)
            if logits.ndim != 2 or logits.shape[0] != images.shape[0]:
                raise ValueError(f"model must return (N, classes) logits, got shape {tuple(logits.shape)}")
            preds = logits.argmax(dim=1)
        success = attack_success(preds, goal, self.targeted)
        return AttackResult(adv, success, perturbation_norm(adv - images, self.norm), preds)

    def _success(self, logits: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        return attack_success(logits.argmax(dim=1), goal, self.targeted)
