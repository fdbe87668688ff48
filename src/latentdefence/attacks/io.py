"""Adversarial sets on disk: built once (e.g. LAD's "Adv. dataset (FGSM)"), reused by every experiment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._io import load_tensors, save_tensors
from .base import Attack, AttackResult

FORMAT = "latentdefence.adversarial_set/1"


@dataclass(frozen=True)
class AdversarialSet:
    """An attack's output with where it came from; what `save_adversarial_set` writes.

    images (N, C, H, W) float32 in [0, 1]; labels, targets (-1 when untargeted), source_indices,
    predictions (N,) int64; success (N,) bool; norms (N,) float32; metadata: attack description,
    model name / checkpoint hash and anything else the caller recorded.
    """

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor
    success: torch.Tensor
    norms: torch.Tensor
    predictions: torch.Tensor
    source_indices: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def attack(self) -> dict[str, Any]:
        return dict(self.metadata.get("attack", {}))

    def __len__(self) -> int:
        return int(self.images.shape[0])


def save_adversarial_set(path: str | os.PathLike[str], result: AttackResult, labels: torch.Tensor, *,
                         attack: Attack | dict[str, Any], targets: torch.Tensor | None = None,
                         source_indices: torch.Tensor | None = None, model_name: str | None = None,
                         checkpoint_sha256: str | None = None, dataset: str | None = None,
                         uint8: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write `result` as safetensors + JSON metadata (atomically); returns the path.

    `uint8=True` stores images as round(255 x) (4x smaller; exact for 8-bit-quantised attacks,
    otherwise perturbations change by <= 1/510 per pixel, so success/norms are those measured
    before quantisation, and `metadata["quantised"]` says so).
    """
    n = result.images.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must be shaped ({n},), got {tuple(labels.shape)}")
    if targets is not None and targets.shape != (n,):
        raise ValueError(f"targets must be shaped ({n},), got {tuple(targets.shape)}")
    if source_indices is None:
        source_indices = torch.arange(n)
    if source_indices.shape != (n,):
        raise ValueError(f"source_indices must be shaped ({n},), got {tuple(source_indices.shape)}")
    images = result.images.detach().cpu()
    tensors = {
        "images": (images * 255).round().to(torch.uint8) if uint8 else images.float(),
        "labels": labels.detach().cpu().long(),
        "targets": (torch.full((n,), -1, dtype=torch.long) if targets is None else targets.detach().cpu().long()),
        "success": result.success.detach().cpu().to(torch.uint8),
        "norms": result.norms.detach().cpu().float(),
        "predictions": result.predictions.detach().cpu().long(),
        "source_indices": source_indices.detach().cpu().long(),
    }
    meta = {
        "format": FORMAT,
        "attack": attack.describe() if isinstance(attack, Attack) else dict(attack),
        "model": model_name,
        "checkpoint_sha256": checkpoint_sha256,
        "dataset": dataset,
        "quantised": uint8,
        "count": n,
        "success_rate": result.success_rate,
        **(extra or {}),
    }
    path = Path(path)
    save_tensors(path, tensors, meta)
    return path


def load_adversarial_set(path: str | os.PathLike[str]) -> AdversarialSet:
    """Read a file written by `save_adversarial_set`; images come back float32 in [0, 1]."""
    tensors, meta = load_tensors(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not an adversarial set (format {meta.get('format')!r}, expected {FORMAT!r})")
    missing = {"images", "labels", "targets", "success", "norms", "predictions", "source_indices"} - set(tensors)
    if missing:
        raise ValueError(f"{path}: adversarial set lacks {sorted(missing)}")
    images = tensors["images"]
    images = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    return AdversarialSet(images=images, labels=tensors["labels"], targets=tensors["targets"],
                          success=tensors["success"].bool(), norms=tensors["norms"],
                          predictions=tensors["predictions"], source_indices=tensors["source_indices"],
                          metadata=meta)
