"""Training-time image augmentation on batches of (N, C, H, W) pixels: the standard CIFAR random crop and flip."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch.nn import functional

Augment = Literal["none", "crop_flip"]


def crop_flip(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Each image shifted by up to `pad` pixels (zero padding, then a random crop back to size) and mirrored left-right
    with probability 1/2 (He et al. 2016's CIFAR augmentation); draws come from `generator` only."""
    n, _, h, w = images.shape
    padded = functional.pad(images, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = (dy[:, None] + torch.arange(h)[None]).to(images.device)                       # (N, H)
    cols = dx[:, None] + torch.arange(w)[None]                                           # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols).to(images.device)
    index_rows = rows[:, None, :, None].expand(n, images.shape[1], h, padded.shape[3])
    out = padded.gather(2, index_rows)                                                   # (N, C, H, W + 2 pad)
    return out.gather(3, cols[:, None, None, :].expand(n, images.shape[1], h, w))        # (N, C, H, W)


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "none": lambda images, _: images,
    "crop_flip": crop_flip,
}
