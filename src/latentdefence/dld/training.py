"""Adversarial training of one defensive encoder-decoder with F frozen (DLD Eqs. 5-7, Fig. 2).

Per batch: PGD examples are crafted through F with A_N inserted (the model the encoder must defend);
the loss is J_T = J_CE + J_c over the clean and adversarial halves (the 50/50 mix of the paper's
Eq. 4), with J_c between the encoder's embedding of each example and the auxiliary encoder's
embedding of a same/different-class partner drawn from the training set. Pairs are balanced within
the clean half and within the adversarial half, partners chosen by the TRUE label, so adversarial
embeddings are pulled to their true class (``pairing="per_half"``). ``pairing="legacy"`` keeps the
earlier scheme (all clean anchors "same", all adversarial anchors "different") for the ablation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .._io import load_tensors, save_tensors
from .._progress import advance, make_progress
from .._seed import seed_everything
from ..attacks import PGD
from ..attacks.base import frozen_eval
from ..data.base import ImageDataset
from ..detectors.base import state_for
from ..evaluation.metrics import accuracy
from ..models import TappedModel
from .contrastive import balanced_same, contrastive_loss, sample_pairs
from .encoders import EncoderDecoder, InsertedModel, activation_shape


PAIRINGS = ("per_half", "legacy")
LR_SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class EncoderTrainConfig:
    """Encoder-decoder training settings; defaults are the paper's MNIST threat model (eps 0.3)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    margin: float = 1.0                 # contrastive margin m (Eq. 6)
    contrastive_weight: float = 1.0     # J_T = J_CE + weight * J_c; the paper uses 1
    adversarial: bool = True
    eps: float = 0.3
    step_size: float = 0.01
    steps: int = 40                     # PGD iterations per batch
    eps_ramp: float = 0.0               # fraction of training over which eps grows linearly from 0
    width: int = 32                     # encoder channels / hidden units (see encoders.py)
    depth: int = 1                      # conv layers in the encoder (2: a stride-2 conv more; encoders.py)
    pairing: str = "per_half"           # "per_half" (balanced in each half) or "legacy" (clean same, adv. different)
    max_train: int | None = None        # first n training images only (CPU profiles)
    seed: int = 0
    # Added after the first cached stages: at these defaults they stay out of the cache key (`cache_settings`).
    precomputed: tuple[str, ...] = ()   # adversarial sets against F alone, crafted once per F ("pgd", "fgsm", "cw")
    precomputed_steps: int = 10         # PGD iterations of the precomputed "pgd" set (Madry step size)
    precomputed_cw_steps: int = 100     # CW-L2 Adam iterations per search of the precomputed "cw" set
    precomputed_cw_searches: int = 2    # its binary searches over c (from c = 10: `experiments.dld`)
    online_fraction: float = 1.0        # share of the adversarial half crafted per batch against F with A_N
    lr_schedule: str = "constant"       # "constant" or "cosine" (to 0 over the planned steps)
    validation: int = 0                 # training images after max_train held out for the stopping rule
    eval_every: int | None = None       # steps between validation checks (None: once per epoch)
    patience: int = 0                   # checks without improvement before stopping (0: never stop early)

    def __post_init__(self) -> None:
        if self.pairing not in PAIRINGS:
            raise ValueError(f"unknown pairing {self.pairing!r}; choose one of {PAIRINGS}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose one of {LR_SCHEDULES}")
        unknown = sorted(set(self.precomputed) - set(PRECOMPUTED))
        if unknown:
            raise ValueError(f"unknown precomputed attacks {unknown}; choose from {PRECOMPUTED}")
        if not 0.0 <= self.online_fraction <= 1.0:
            raise ValueError(f"online_fraction must lie in [0, 1], got {self.online_fraction}")
        if not self.precomputed and self.online_fraction < 1.0:
            raise ValueError("online_fraction < 1 needs precomputed attacks to fill the rest of the adversarial half")
        if self.patience and not self.validation:
            raise ValueError("patience (early stopping) needs validation images")

    def cache_settings(self) -> dict[str, object]:
        """asdict without the later fields left at their defaults, so earlier cache keys stay valid."""
        defaults = EncoderTrainConfig()
        out = asdict(self)
        for name in LATER_FIELDS:
            if out[name] == getattr(defaults, name):
                del out[name]
        return out


PRECOMPUTED = ("pgd", "fgsm", "cw", "detector_aware")   # the last: crafted against a detector (`dld.hardening`)
LATER_FIELDS = ("precomputed", "precomputed_steps", "precomputed_cw_steps", "precomputed_cw_searches", "online_fraction",
                "lr_schedule", "validation", "eval_every", "patience")


@dataclass(frozen=True)
class EncoderValidation:
    """Held-out training images (and their precomputed adversarial versions) for the stopping rule."""

    data: ImageDataset
    adversarial: tuple[torch.Tensor, ...] = ()


@dataclass
class TrainingLog:
    """What one encoder's training did: steps taken, validation history and the state kept."""

    steps: int = 0
    planned_steps: int = 0
    best_step: int = 0
    best_accuracy: float | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def train_encoder(classifier: TappedModel, tap: str, train: ImageDataset, latent_dim: int,
                  config: EncoderTrainConfig = EncoderTrainConfig(),
                  device: torch.device | None = None, precomputed: Sequence[torch.Tensor] = (),
                  validation: EncoderValidation | None = None, log: TrainingLog | None = None,
                  start: EncoderDecoder | None = None) -> EncoderDecoder:
    """Train A_N (and its auxiliary encoder) for layer `tap`; F's parameters are never changed.

    `precomputed`: adversarial versions of ``train.head(config.max_train)``, one tensor per entry of
    ``config.precomputed`` (against F alone, or against a detector: `dld.hardening`); `validation` drives the
    stopping rule (best state kept); `log` records it; `start`: fine-tune a copy of these weights instead of
    fresh ones (the original is left unchanged).
    """
    if len(precomputed) != len(config.precomputed):
        raise ValueError(f"config names {len(config.precomputed)} precomputed sets, got {len(precomputed)}")
    if config.validation and validation is None:
        raise ValueError("config.validation > 0 needs the held-out validation images")
    generator = seed_everything(config.seed)
    device = device or next(classifier.parameters()).device
    data = train.head(config.max_train)
    for adv in precomputed:
        if adv.shape != data.images.shape:
            raise ValueError(f"precomputed set has shape {tuple(adv.shape)}, training images {tuple(data.images.shape)}")
    shape = activation_shape(classifier, tap)
    if start is not None and (tuple(start.shape) != tuple(shape) or start.latent_dim != latent_dim):
        raise ValueError(f"start encoder-decoder {start.spec()} does not fit tap {tap!r} (activation {tuple(shape)}, "
                         f"latent_dim {latent_dim})")
    ed = (copy.deepcopy(start) if start is not None else
          EncoderDecoder(shape, latent_dim, config.width, config.depth)).to(device)
    opt = torch.optim.Adam(ed.parameters(), lr=config.lr)
    batches = -(-len(data) // config.batch_size)
    total = config.epochs * batches
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total) if config.lr_schedule == "cosine" else None)
    log = log if log is not None else TrainingLog()
    log.planned_steps = total
    every = config.eval_every or batches
    best_state, waited = None, 0
    with frozen_eval(classifier), make_progress() as progress:
        inserted = InsertedModel(classifier, tap, ed.encoder, ed.decoder)
        task = progress.add_task(f"encoder {tap}", total=total, status="")
        for step in range(total):
            if step % batches == 0:
                order = torch.randperm(len(data), generator=generator)
            idx = order[(step % batches) * config.batch_size:(step % batches + 1) * config.batch_size]
            loss, acc = _train_step(classifier, inserted, ed, opt, data, idx, _eps_at(config, step, total),
                                    config, generator, device, precomputed)
            if sched is not None:
                sched.step()
            log.steps = step + 1
            advance(progress, task, f"loss {loss:.3f} acc {acc:.3f}")
            if validation is not None and ((step + 1) % every == 0 or step + 1 == total):
                score = validation_accuracy(inserted, validation)
                log.history.append({"step": step + 1, "accuracy": score, "train_loss": loss})
                if log.best_accuracy is None or score > log.best_accuracy:
                    log.best_accuracy, log.best_step, waited = score, step + 1, 0
                    best_state = copy.deepcopy(ed.state_dict())
                else:
                    waited += 1
                    if config.patience and waited >= config.patience:
                        break
    if best_state is not None:
        ed.load_state_dict(best_state)
    return ed


def validation_accuracy(inserted: InsertedModel, validation: EncoderValidation, batch_size: int = 500) -> float:
    """Mean accuracy of F with A_N inserted over the clean and each precomputed adversarial validation set."""
    sets = (validation.data.images, *validation.adversarial)
    accs = [accuracy(inserted, images, validation.data.labels, batch_size) for images in sets]
    return sum(accs) / len(accs)


def _eps_at(config: EncoderTrainConfig, step: int, total: int) -> float:
    """Linear eps ramp over the first `eps_ramp` fraction of the steps."""
    ramp = config.eps_ramp * total
    return config.eps if ramp <= 0 else config.eps * min(1.0, (step + 1) / ramp)


def _train_step(classifier: TappedModel, inserted: InsertedModel, ed: EncoderDecoder, opt: torch.optim.Optimizer,
                data: ImageDataset, idx: torch.Tensor, eps: float, config: EncoderTrainConfig,
                generator: torch.Generator, device: torch.device,
                precomputed: Sequence[torch.Tensor] = ()) -> tuple[float, float]:
    """One optimiser step on J_T; returns (loss, accuracy of F-with-A_N on the batch)."""
    x, y = data.images[idx].to(device), data.labels[idx].to(device)
    halves = [len(y)]
    if config.adversarial and eps > 0:
        adv = _adversarial_half(inserted, x, y, idx, eps, config, generator, precomputed)
        x, y = torch.cat([x, adv]), torch.cat([y, y])                     # (2B, C, H, W); adv. keep TRUE labels
        halves = [len(y) // 2, len(y) // 2]
    if config.pairing == "legacy":
        same = torch.arange(len(y)) < (len(y) + 1) // 2                   # every adversarial anchor "different"
    else:
        same = balanced_same(halves, generator)
    partner, same = sample_pairs(y.cpu(), data.labels, generator, same)
    x2 = data.images[partner].to(device)
    with torch.no_grad():
        h2 = classifier.features(x2, inserted.tap)
    h = classifier.features(x, inserted.tap)
    z = ed.encoder(h)                                                     # (2B, d)
    logits = classifier.forward_from(ed.decoder(z), inserted.tap)
    j_ce = nn.functional.cross_entropy(logits, y)
    j_c = contrastive_loss(z, ed.auxiliary(h2), same.to(device), config.margin)
    loss = j_ce + config.contrastive_weight * j_c
    if not torch.isfinite(loss):
        raise FloatingPointError(f"encoder training loss became {loss.item()} (J_CE {j_ce.item()}, J_c {j_c.item()})")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.item()), float((logits.argmax(1) == y).float().mean().item())


def _adversarial_half(inserted: InsertedModel, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, eps: float,
                      config: EncoderTrainConfig, generator: torch.Generator,
                      precomputed: Sequence[torch.Tensor]) -> torch.Tensor:
    """The batch's adversarial half: the first `online_fraction` crafted now against F with A_N, the rest drawn
    per image from one of the precomputed sets against F alone (those keep their full eps; the ramp is online)."""
    n_online = len(y) if not precomputed else round(config.online_fraction * len(y))
    parts = []
    if n_online:
        parts.append(PGD(eps=eps, step_size=config.step_size, steps=config.steps, generator=generator)(
            inserted, x[:n_online], y[:n_online]).images)
    if n_online < len(y):
        rest = idx[n_online:]
        choice = torch.randint(len(precomputed), (len(rest),), generator=generator)
        stacked = torch.stack([pre[rest] for pre in precomputed])            # (A, b, C, H, W)
        parts.append(stacked[choice, torch.arange(len(rest))].to(x.device))
    return torch.cat(parts)


def save_encoders(path: str, encoders: dict[str, EncoderDecoder]) -> None:
    """Encoder-decoders (with auxiliaries) for several taps in one safetensors file."""
    tensors = {f"{tap}.{k}": v for tap, ed in encoders.items() for k, v in ed.state_dict().items()}
    meta = {tap: ed.spec() for tap, ed in encoders.items()}
    save_tensors(path, tensors, {"encoders": meta})


def load_encoders(path: str) -> dict[str, EncoderDecoder]:
    """Inverse of `save_encoders` (files written before `depth` existed hold depth-1 encoders)."""
    tensors, meta = load_tensors(path)
    out: dict[str, EncoderDecoder] = {}
    for tap, spec in meta["encoders"].items():
        ed = EncoderDecoder(spec["shape"], spec["latent_dim"], spec["width"], spec.get("depth", 1))
        ed.load_state_dict(state_for(ed, tensors, f"{tap}."))
        out[tap] = ed
    return out
