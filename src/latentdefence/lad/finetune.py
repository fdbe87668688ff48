"""LAD's adversarial fine-tuning (Zhou et al., Eq. 4) and the test-set split that keeps evaluation clean.

Eq. 4: J~ = alpha * J(theta; x, y) + (1 - alpha) * J(theta; G(z + eps beta d), y), alpha = 0.5: each step
mixes a batch of clean images with a batch of generated images carrying their ORIGINAL labels. By default the
clean batch is drawn at random from the training images; `pair_clean` follows the equation literally (z = phi(x):
each generated image is paired with its own source x).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .._io import load_tensors
from .._progress import advance, make_progress
from .._seed import seed_everything
from ..attacks.base import margin
from ..data.base import ImageDataset


def eq4_loss(model: nn.Module, clean_x: torch.Tensor, clean_y: torch.Tensor, adv_x: torch.Tensor,
             adv_y: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Eq. 4: alpha * CE on clean images + (1 - alpha) * CE on generated images with their original labels."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return alpha * F.cross_entropy(model(clean_x), clean_y) + (1 - alpha) * F.cross_entropy(model(adv_x), adv_y)


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning settings (the paper gives only alpha = 0.5; epochs count passes over the generated set)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-4
    alpha: float = 0.5
    seed: int = 0
    pair_clean: bool = False  # Eq. 4 literally: clean row i is the source image of generated row i


def finetune(model: nn.Module, clean: ImageDataset, adversarial: ImageDataset, config: FinetuneConfig) -> nn.Module:
    """A fine-tuned copy of `model` (the original is untouched), trained with Eq. 4 by Adam."""
    if len(adversarial) == 0 or len(clean) == 0:
        raise ValueError(f"fine-tuning needs clean and adversarial images, got {len(clean)} and {len(adversarial)}")
    if clean.images.shape[1:] != adversarial.images.shape[1:]:
        raise ValueError(f"clean images {tuple(clean.images.shape[1:])} and adversarial images "
                         f"{tuple(adversarial.images.shape[1:])} differ in shape")
    if config.pair_clean and len(clean) != len(adversarial):
        raise ValueError(f"pair_clean needs one clean image per generated image, got {len(clean)} and {len(adversarial)}")
    gen = seed_everything(config.seed)
    tuned = copy.deepcopy(model)
    device = next(tuned.parameters()).device
    opt = torch.optim.Adam(tuned.parameters(), lr=config.lr)
    tuned.train()
    with make_progress() as progress:
        task = progress.add_task("fine-tune (Eq. 4)", total=config.epochs, status="")
        for _ in range(config.epochs):
            for idx in torch.randperm(len(adversarial), generator=gen).split(config.batch_size):
                clean_idx = idx if config.pair_clean else torch.randint(len(clean), (idx.numel(),), generator=gen)
                loss = eq4_loss(tuned, clean.images[clean_idx].to(device), clean.labels[clean_idx].to(device),
                                adversarial.images[idx].to(device), adversarial.labels[idx].to(device), config.alpha)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"Eq. 4 loss became {loss.item()}; lower the learning rate")
                opt.zero_grad()
                loss.backward()
                opt.step()
            advance(progress, task, f"loss {loss.item():.4f}")
    tuned.eval()
    return tuned


def _quartiles(values: torch.Tensor) -> dict[str, float]:
    q = torch.quantile(values.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return {"mean": float(values.double().mean()), "q25": q[0], "median": q[1], "q75": q[2]}


@torch.no_grad()
def finetune_set_statistics(model: nn.Module, data: ImageDataset, sources: torch.Tensor,
                            batch_size: int = 500) -> dict[str, object]:
    """What a fine-tuning set teaches: its size, the fraction `model` gets wrong, the pixel distance (L2, L-inf) of
    each image to its source image `sources` (N, C, H, W), and `model`'s logit margin (label minus best other;
    negative = misclassified, near 0 = near the decision boundary)."""
    if sources.shape != data.images.shape:
        raise ValueError(f"sources {tuple(sources.shape)} must match the set's images {tuple(data.images.shape)}")
    if len(data) == 0:
        raise ValueError("cannot describe an empty fine-tuning set")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    logits = torch.cat([model(data.images[i:i + batch_size].to(device)).cpu() for i in range(0, len(data), batch_size)])
    model.train(was_training)
    delta = (data.images - sources).flatten(1)                                   # (N, C*H*W)
    margins = margin(logits, data.labels, targeted=False)
    return {"n": len(data), "misclassified": float((margins < 0).double().mean()),
            "l2": _quartiles(delta.norm(dim=1)), "linf": _quartiles(delta.abs().amax(dim=1)),
            "logit_margin": _quartiles(margins)}


def per_class_sample(labels: torch.Tensor, pool: torch.Tensor, per_class: int, gen: torch.Generator) -> torch.Tensor:
    """`per_class` random indices of each class from `pool` (sorted), failing if a class has too few."""
    chosen = []
    for c in torch.unique(labels[pool]).tolist():
        members = pool[labels[pool] == c]
        if members.numel() < per_class:
            raise ValueError(f"class {c} has {members.numel()} images left, {per_class} requested")
        chosen.append(members[torch.randperm(members.numel(), generator=gen)[:per_class]])
    return torch.cat(chosen).sort().values if chosen else pool[:0]


@dataclass(frozen=True)
class LadSplit:
    """Disjoint test-set indices: boundary (SVM fit), generation (Large Adv.), small (Small Adv.), evaluation (rest)."""

    boundary: torch.Tensor
    generation: torch.Tensor
    small: torch.Tensor
    evaluation: torch.Tensor

    def __post_init__(self) -> None:
        parts = self.as_dict()
        for a, b in [(a, b) for i, a in enumerate(parts) for b in list(parts)[i + 1:]]:
            shared = set(parts[a].tolist()) & set(parts[b].tolist())
            if shared:
                raise ValueError(f"split parts {a!r} and {b!r} share {len(shared)} images, e.g. {sorted(shared)[:5]}")

    def as_dict(self) -> dict[str, torch.Tensor]:
        """Parts by name, for results files."""
        return {"boundary": self.boundary, "generation": self.generation, "small": self.small,
                "evaluation": self.evaluation}


def make_split(labels: torch.Tensor, *, boundary_per_class: int, generation_per_class: int, small_per_class: int,
               seed: int) -> LadSplit:
    """Draw the build sets per class from the test labels; every other image is for evaluation only."""
    gen = torch.Generator().manual_seed(seed)
    pool = torch.arange(labels.shape[0])
    parts: list[torch.Tensor] = []
    for per_class in (boundary_per_class, generation_per_class, small_per_class):
        part = per_class_sample(labels, pool, per_class, gen)
        pool = pool[~torch.isin(pool, part)]
        parts.append(part)
    boundary, generation, small = parts
    return LadSplit(boundary, generation, small, evaluation=pool)


def eps_label(eps: float | Sequence[float]) -> str:
    """A stable name for an eps or list of eps, e.g. FT-0.1 (used in results keys and file names)."""
    values = [eps] if isinstance(eps, (int, float)) else list(eps)
    return "+".join(f"{float(v):g}" for v in values)


def used_indices(paths: Sequence[str | os.PathLike[str]]) -> torch.Tensor:
    """Test rows that boundaries files (fit_indices) or generated sets (source_index) were built from."""
    used = [torch.zeros(0, dtype=torch.long)]
    for path in paths:
        tensors, meta = load_tensors(path)
        if "fit_indices" in meta:
            used.append(torch.tensor(meta["fit_indices"], dtype=torch.long))
        elif "source_index" in tensors:
            used.append(tensors["source_index"].long())
        else:
            raise ValueError(f"{path}: neither a boundaries file nor a generated set; cannot tell which images it used")
    return torch.cat(used).unique()
