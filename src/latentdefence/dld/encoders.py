"""Defensive encoder-decoders A_N for one tap of a frozen classifier F (DLD, Section IV-A, Fig. 2).

Architecture (our choice; the paper gives none), sized so that all encoders together cost well under
half of F's forward pass:

* conv tap (C, H, W), depth 1: encoder = Conv2d(C, width, 3, pad 1) + ReLU + Flatten + Linear(width*H*W, d);
  decoder = Linear(d, width*H*W) + ReLU + Unflatten + Conv2d(width, C, 3, pad 1);
* depth 2 adds a stride-2 Conv2d(width, width, 3, pad 1) + ReLU after the first conv (so the linear map
  reads a (width, ceil(H/2), ceil(W/2)) map); its decoder adds the mirroring ConvTranspose2d + ReLU;
* vector tap (C,): encoder = Linear(C, width) + ReLU + Linear(width, d) (depth 2: one more
  Linear(width, width) + ReLU); decoder mirrors it.

The decoder output is linear (no final ReLU) so the same block fits taps taken before or after a
non-linearity. Built as ``nn.Sequential`` so a state dict plus (shape, d, width, depth) rebuilds it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..models import TappedModel


def activation_shape(classifier: TappedModel, tap: str) -> tuple[int, ...]:
    """Shape of one sample's activation at `tap`, found by a dry run on zeros."""
    param = next(classifier.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    with torch.no_grad():
        h = classifier.features(torch.zeros((1, *classifier.input_shape), device=device), tap)
    return tuple(h.shape[1:])


DEPTHS = (1, 2)


def make_encoder(shape: Sequence[int], latent_dim: int, width: int = 32, depth: int = 1) -> nn.Sequential:
    """Encoder from an activation of `shape` to a `latent_dim` embedding."""
    _check(shape, latent_dim, width, depth)
    if len(shape) == 3:
        c, h, w = shape
        layers: list[nn.Module] = [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
        if depth == 2:
            layers += [nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU()]           # (B, width, h', w')
        h, w = _reduced(h, depth), _reduced(w, depth)
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * h * w, latent_dim))  # (B, width*h'*w')
    hidden: list[nn.Module] = [nn.Linear(width, width), nn.ReLU()] if depth == 2 else []
    return nn.Sequential(nn.Linear(shape[0], width), nn.ReLU(), *hidden, nn.Linear(width, latent_dim))


def make_decoder(shape: Sequence[int], latent_dim: int, width: int = 32, depth: int = 1) -> nn.Sequential:
    """Decoder from a `latent_dim` embedding back to an activation of `shape`."""
    _check(shape, latent_dim, width, depth)
    if len(shape) == 3:
        c, h, w = shape
        rh, rw = _reduced(h, depth), _reduced(w, depth)
        layers: list[nn.Module] = [nn.Linear(latent_dim, width * rh * rw), nn.ReLU(),
                                   nn.Unflatten(1, (width, rh, rw))]                          # (B, width, h', w')
        if depth == 2:  # output_padding makes the transpose conv land exactly on (h, w)
            layers += [nn.ConvTranspose2d(width, width, 3, stride=2, padding=1,
                                          output_padding=(h - 2 * rh + 1, w - 2 * rw + 1)), nn.ReLU()]
        return nn.Sequential(*layers, nn.Conv2d(width, c, 3, padding=1))
    hidden: list[nn.Module] = [nn.Linear(width, width), nn.ReLU()] if depth == 2 else []
    return nn.Sequential(nn.Linear(latent_dim, width), nn.ReLU(), *hidden, nn.Linear(width, shape[0]))


def _reduced(size: int, depth: int) -> int:
    """Spatial size after the encoder's convs: a stride-2 conv (pad 1) halves it, rounding up."""
    return -(-size // 2) if depth == 2 else size


def _check(shape: Sequence[int], latent_dim: int, width: int, depth: int) -> None:
    if len(shape) not in (1, 3) or any(int(s) <= 0 for s in shape):
        raise ValueError(f"encoders support activations shaped (C,) or (C, H, W), got {tuple(shape)}")
    if latent_dim <= 0 or width <= 0:
        raise ValueError(f"latent_dim and width must be positive, got {latent_dim} and {width}")
    if depth not in DEPTHS:
        raise ValueError(f"encoder depth must be one of {DEPTHS}, got {depth}")


class EncoderDecoder(nn.Module):
    """A_N plus its untied auxiliary encoder (same architecture), used only while training."""

    def __init__(self, shape: Sequence[int], latent_dim: int, width: int = 32, depth: int = 1) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.latent_dim = latent_dim
        self.width = width
        self.depth = depth
        self.encoder = make_encoder(shape, latent_dim, width, depth)
        self.decoder = make_decoder(shape, latent_dim, width, depth)
        self.auxiliary = make_encoder(shape, latent_dim, width, depth)

    def spec(self) -> dict[str, object]:
        """What rebuilds this architecture: shape, latent_dim, width, depth (saved in artifacts)."""
        return {"shape": list(self.shape), "latent_dim": self.latent_dim, "width": self.width, "depth": self.depth}

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """decoder(encoder(h)): the activation fed back into F."""
        if tuple(h.shape[1:]) != self.shape:
            raise ValueError(f"encoder-decoder expects activations (B, {self.shape}), got {tuple(h.shape)}")
        return self.decoder(self.encoder(h))


class InsertedModel(nn.Module):
    """F with A_N inserted at `tap`: x -> logits, the model attacked and trained through."""

    def __init__(self, classifier: TappedModel, tap: str, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        classifier.check_tap(tap)
        self.classifier = classifier
        self.tap = tap
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.forward_with(x, self.tap, lambda h: self.decoder(self.encoder(h)))
