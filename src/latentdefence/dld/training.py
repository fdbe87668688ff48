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

from dataclasses import dataclass

import torch
from torch import nn

from .._io import load_tensors, save_tensors
from .._progress import advance, make_progress
from .._seed import seed_everything
from ..attacks import PGD
from ..attacks.base import frozen_eval
from ..data.base import ImageDataset
from ..models import TappedModel
from .contrastive import balanced_same, contrastive_loss, sample_pairs
from .encoders import EncoderDecoder, InsertedModel, activation_shape


PAIRINGS = ("per_half", "legacy")


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


def train_encoder(classifier: TappedModel, tap: str, train: ImageDataset, latent_dim: int,
                  config: EncoderTrainConfig = EncoderTrainConfig(),
                  device: torch.device | None = None) -> EncoderDecoder:
    """Train A_N (and its auxiliary encoder) for layer `tap`; F's parameters are never changed."""
    if config.pairing not in PAIRINGS:
        raise ValueError(f"unknown pairing {config.pairing!r}; choose one of {PAIRINGS}")
    generator = seed_everything(config.seed)
    device = device or next(classifier.parameters()).device
    data = train.head(config.max_train)
    ed = EncoderDecoder(activation_shape(classifier, tap), latent_dim, config.width, config.depth).to(device)
    opt = torch.optim.Adam(ed.parameters(), lr=config.lr)
    batches = -(-len(data) // config.batch_size)
    total = config.epochs * batches
    with frozen_eval(classifier), make_progress() as progress:
        inserted = InsertedModel(classifier, tap, ed.encoder, ed.decoder)
        task = progress.add_task(f"encoder {tap}", total=total, status="")
        for step in range(total):
            if step % batches == 0:
                order = torch.randperm(len(data), generator=generator)
            idx = order[(step % batches) * config.batch_size:(step % batches + 1) * config.batch_size]
            loss, acc = _train_step(classifier, inserted, ed, opt, data, idx, _eps_at(config, step, total),
                                    config, generator, device)
            advance(progress, task, f"loss {loss:.3f} acc {acc:.3f}")
    return ed


def _eps_at(config: EncoderTrainConfig, step: int, total: int) -> float:
    """Linear eps ramp over the first `eps_ramp` fraction of the steps."""
    ramp = config.eps_ramp * total
    return config.eps if ramp <= 0 else config.eps * min(1.0, (step + 1) / ramp)


def _train_step(classifier: TappedModel, inserted: InsertedModel, ed: EncoderDecoder, opt: torch.optim.Optimizer,
                data: ImageDataset, idx: torch.Tensor, eps: float, config: EncoderTrainConfig,
                generator: torch.Generator, device: torch.device) -> tuple[float, float]:
    """One optimiser step on J_T; returns (loss, accuracy of F-with-A_N on the batch)."""
    x, y = data.images[idx].to(device), data.labels[idx].to(device)
    halves = [len(y)]
    if config.adversarial and eps > 0:
        adv = PGD(eps=eps, step_size=config.step_size, steps=config.steps, generator=generator)(inserted, x, y)
        x, y = torch.cat([x, adv.images]), torch.cat([y, y])              # (2B, C, H, W); adv. keep TRUE labels
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
        prefix = f"{tap}."
        ed.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        out[tap] = ed
    return out
