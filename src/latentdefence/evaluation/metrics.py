"""Accuracy, robust accuracy and confidence intervals, computed in batches."""

from __future__ import annotations

import torch
from torch import nn

from ..attacks.base import Attack, attack_in_batches, frozen_eval


@torch.no_grad()
def batched_predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Predicted classes (N,) for images (N, C, H, W), in eval mode; every submodule's mode is restored."""
    device = next(model.parameters()).device
    with frozen_eval(model), torch.no_grad():
        return torch.cat([model(images[i:i + batch_size].to(device)).argmax(1).cpu()
                          for i in range(0, len(images), batch_size)]) if len(images) else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500) -> float:
    """Fraction of images classified as their label."""
    correct = int((batched_predict(model, images, batch_size) == labels).sum().item())
    return correct / max(len(labels), 1)


def robust_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, attack: Attack,
                    batch_size: int = 250) -> float:
    """Fraction of images still classified correctly after `attack` (untargeted)."""
    result = attack_in_batches(model, attack, images, labels, batch_size=batch_size)
    return int((result.predictions == labels.cpu()).sum().item()) / max(len(images), 1)
