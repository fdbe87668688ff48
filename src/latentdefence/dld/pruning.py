"""Training-set embeddings per encoder, pruned of points F-with-A_N misclassifies (DLD Section IV-B)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..attacks.base import frozen_eval
from ..data.base import ImageDataset
from ..models import TappedModel
from .encoders import EncoderDecoder


@torch.no_grad()
def pruned_embeddings(classifier: TappedModel, encoders: Mapping[str, EncoderDecoder], data: ImageDataset,
                      batch_size: int = 256) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per tap: (embeddings (M, d), labels (M,), positions (M,) in `data`) of the points F with A_N inserted
    classifies correctly; the positions let a detector cite the training images behind a verdict."""
    device = next(classifier.parameters()).device
    parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {tap: [] for tap in encoders}
    with frozen_eval(classifier):
        for i in range(0, len(data), batch_size):
            x, y = data.images[i:i + batch_size].to(device), data.labels[i:i + batch_size]
            acts = classifier.intermediates(x, list(encoders))
            for tap, ed in encoders.items():
                z = ed.encoder(acts[tap])                                          # (B, d)
                pred = classifier.forward_from(ed.decoder(z), tap).argmax(1).cpu()
                parts[tap].append((z.cpu(), pred))
    out = {}
    for tap, chunks in parts.items():
        z, pred = torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])
        keep = prune_mask(pred, data.labels)
        out[tap] = (z[keep], data.labels[keep], keep.nonzero().flatten())
    return out


def prune_mask(predictions: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Keep (bool (N,)) the training points whose prediction matches their label."""
    if predictions.shape != labels.shape:
        raise ValueError(f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} differ in shape")
    return predictions == labels
