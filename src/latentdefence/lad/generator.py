"""LAD's boundary-guided generator G: latent features z = phi(x) back to images (Zhou et al., Eq. 2).

Architectures, by dataset, from the paper's appendix (Tables XI, XIII, XV), with the changes needed to
make the shapes work (see docs/lad.md):

* MNIST (Table XI): Linear 500 -> 50x4x4, ConvT k2 s4 (4 -> 14), Conv k3 (-> 12), ConvT k2 s3
  (-> 35), Conv k4 (-> 32), Conv k5 (-> 28), all without padding; channels 50-32-32-16-16-1 (the
  table gives none); ReLU between layers, sigmoid at the end (Section IV-A).
* SVHN (Table XIII) and CelebA (Table XV): Linear to 512 x s x s, then blocks of ConvT k2 + BN and
  Conv k3 + BN + ReLU. The tables say stride 1 for the transposed convolutions, which grows 2x2 only
  to 6x6; we use stride 2 (2 -> 32 for SVHN, 4 -> 128 for CelebA). The last 1x1 conv ends in a
  sigmoid rather than Tanh, since our pixels are in [0, 1] ((tanh(a) + 1) / 2 = sigmoid(2a)).
"""

from __future__ import annotations

from collections.abc import Callable
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._io import load_tensors, save_tensors
from .._progress import advance, make_progress
from .._seed import seed_everything
from ..data.base import ImageDataset
from ..models.architectures import scaled
from ..models.taps import TappedModel


class LatentGenerator(nn.Module):
    """G: (N, D) latent features -> (N, C, H, W) images in [0, 1]."""

    arch: tuple[str, dict[str, Any]] | None = None  # (dataset, kwargs), set by create_generator

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], stem: tuple[int, int],
                 body: nn.Sequential) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.image_shape = tuple(image_shape)
        self._stem_shape = stem  # (channels, side) of the linear layer's output
        self.linear = nn.Linear(latent_dim, stem[0] * stem[1] * stem[1])
        self.body = body

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"generator expects latents (N, {self.latent_dim}), got {tuple(z.shape)}")
        channels, side = self._stem_shape
        h = self.linear(z).view(-1, channels, side, side)  # (N, C0, s, s)
        x = self.body(h)
        if tuple(x.shape[1:]) != self.image_shape:
            raise RuntimeError(f"generator produced {tuple(x.shape[1:])}, expected {self.image_shape}")
        return x


def mnist_generator(latent_dim: int = 500, width: float = 1.0) -> LatentGenerator:
    """Table XI generator for 28x28 MNIST from LeNet's 500-d fc1 features."""
    c0, c1, c2 = scaled(50, width), scaled(32, width), scaled(16, width)
    body = nn.Sequential(
        nn.ReLU(),
        nn.ConvTranspose2d(c0, c1, 2, stride=4), nn.ReLU(),   # (N, c1, 14, 14)
        nn.Conv2d(c1, c1, 3), nn.ReLU(),                      # (N, c1, 12, 12)
        nn.ConvTranspose2d(c1, c2, 2, stride=3), nn.ReLU(),   # (N, c2, 35, 35)
        nn.Conv2d(c2, c2, 4), nn.ReLU(),                      # (N, c2, 32, 32)
        nn.Conv2d(c2, 1, 5), nn.Sigmoid(),                    # (N, 1, 28, 28)
    )
    return LatentGenerator(latent_dim, (1, 28, 28), (c0, 4), body)


Spec = list[tuple[str, int, int]]  # (kind: "convt" | "conv", channels, repeat)


def _conv_body(spec: Spec, cin: int, width: float) -> nn.Sequential:
    """ConvT k2 s2 + BN, or `repeat` x (Conv k3 + BN + ReLU), in table order; a 1x1 conv + sigmoid to RGB."""
    layers: list[nn.Module] = []
    for kind, channels, repeat in spec:
        cout = scaled(channels, width)
        for _ in range(repeat):
            if kind == "convt":
                layers += [nn.ConvTranspose2d(cin, cout, 2, stride=2), nn.BatchNorm2d(cout)]
            else:
                layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
    layers += [nn.Conv2d(cin, 3, 1), nn.Sigmoid()]
    return nn.Sequential(*layers)


_SVHN_SPEC: Spec = [("conv", 512, 1), ("convt", 512, 1), ("conv", 512, 1), ("convt", 512, 1), ("conv", 256, 1),
                    ("convt", 256, 1), ("conv", 128, 1), ("convt", 128, 1), ("conv", 64, 1)]
_CELEBA_SPEC: Spec = [("convt", 512, 1), ("conv", 512, 3), ("convt", 512, 1), ("conv", 512, 3), ("convt", 256, 1),
                      ("conv", 256, 3), ("convt", 128, 1), ("conv", 128, 2), ("convt", 64, 1), ("conv", 64, 2)]


def svhn_generator(latent_dim: int = 4096, width: float = 1.0) -> LatentGenerator:
    """Table XIII generator for 32x32 SVHN from svhnNet's 4096-d fifth layer (2 -> 4 -> 8 -> 16 -> 32)."""
    c0 = scaled(512, width)
    return LatentGenerator(latent_dim, (3, 32, 32), (c0, 2), _conv_body(_SVHN_SPEC, c0, width))


def celeba_generator(latent_dim: int = 4096, width: float = 1.0, image_size: int = 128) -> LatentGenerator:
    """Table XV generator for CelebA from CelebANet's 4096-d fc1 (s -> 32 s with five ConvT blocks)."""
    if image_size % 32:
        raise ValueError(f"celeba generator needs image_size divisible by 32, got {image_size}")
    c0 = scaled(512, width)
    return LatentGenerator(latent_dim, (3, image_size, image_size), (c0, image_size // 32),
                           _conv_body(_CELEBA_SPEC, c0, width))


GENERATORS: dict[str, Callable[..., LatentGenerator]] = {
    "mnist": mnist_generator,
    "svhn": svhn_generator,
    "celeba": celeba_generator,
}


def create_generator(dataset: str, **kwargs: Any) -> LatentGenerator:
    """The paper's generator for `dataset` (mnist, svhn, celeba), by name."""
    if dataset not in GENERATORS:
        raise KeyError(f"no generator for dataset {dataset!r}; available: {sorted(GENERATORS)}")
    generator = GENERATORS[dataset](**kwargs)
    generator.arch = (dataset, dict(kwargs))  # recorded by save_generator so it can be rebuilt by name
    return generator


def save_generator(path: str | os.PathLike[str], generator: LatentGenerator, metadata: dict[str, Any] | None = None) -> None:
    """Weights as safetensors with the architecture name and kwargs (and e.g. its MSE) as metadata."""
    arch = getattr(generator, "arch", None)
    if arch is None:
        raise ValueError("generator was not built by create_generator; cannot record its architecture")
    save_tensors(path, generator.state_dict(), {"dataset": arch[0], "kwargs": arch[1], **(metadata or {})})


def load_generator(path: str | os.PathLike[str]) -> tuple[LatentGenerator, dict[str, Any]]:
    """(generator in eval mode, metadata) from a file written by `save_generator`."""
    tensors, meta = load_tensors(path)
    if "dataset" not in meta:
        raise ValueError(f"{path}: not a LAD generator file (no 'dataset' in its metadata)")
    generator = create_generator(meta["dataset"], **meta.get("kwargs", {}))
    try:
        generator.load_state_dict(tensors)
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the {meta['dataset']} generator ({err})") from err
    return generator.eval(), meta


@dataclass(frozen=True)
class GeneratorConfig:
    """Training settings for Eq. 2 (paper: MSE, i.e. p = 2, 1000 epochs on the MNIST training set)."""

    epochs: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    p: int = 2
    seed: int = 0


@torch.no_grad()
def extract_latents(classifier: TappedModel, tap: str, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """phi(x): the frozen classifier's `tap` activations (N, D), batched, in eval mode."""
    was_training = classifier.training
    classifier.eval()
    try:
        device = next(classifier.parameters()).device
        parts = [classifier.features(images[i:i + batch_size].to(device), tap).cpu()
                 for i in range(0, images.shape[0], batch_size)]
    finally:
        classifier.train(was_training)
    z = torch.cat(parts)
    if z.ndim != 2:
        raise ValueError(f"LAD reads a fully connected layer's (N, D) output; tap {tap!r} gives {tuple(z.shape)}")
    if torch.isnan(z).any():
        raise ValueError(f"latents at tap {tap!r} contain NaN")
    return z


def latent_head(classifier: TappedModel, tap: str, batch_size: int = 1024) -> Callable[[torch.Tensor], torch.Tensor]:
    """f_p: the frozen classifier from `tap` on, as latents (N, D) -> logits (N, K) on CPU (eval mode, batched)."""
    device = next(classifier.parameters()).device

    @torch.no_grad()
    def head(z: torch.Tensor) -> torch.Tensor:
        was_training = classifier.training
        classifier.eval()
        try:
            return torch.cat([classifier.forward_from(z[i:i + batch_size].to(device), tap).cpu()
                              for i in range(0, z.shape[0], batch_size)])
        finally:
            classifier.train(was_training)

    return head


def lp_loss(x: torch.Tensor, x_hat: torch.Tensor, p: int) -> torch.Tensor:
    """Eq. 2: mean over samples of ||x - G(z)||_p^p, divided by pixels so lr does not depend on image size."""
    if p not in (1, 2):
        raise ValueError(f"Eq. 2 uses p = 1 or p = 2, got p={p}")
    return (x - x_hat).abs().pow(p).mean()


def train_generator(generator: LatentGenerator, latents: torch.Tensor, images: torch.Tensor,
                    config: GeneratorConfig) -> list[float]:
    """Fit G on (z, x) pairs with Eq. 2; the classifier is not involved (latents are precomputed). Returns epoch losses."""
    if latents.shape[0] != images.shape[0]:
        raise ValueError(f"{latents.shape[0]} latents for {images.shape[0]} images")
    gen = seed_everything(config.seed)
    device = next(generator.parameters()).device
    opt = torch.optim.Adam(generator.parameters(), lr=config.lr)
    generator.train()
    losses: list[float] = []
    n = images.shape[0]
    with make_progress() as progress:
        task = progress.add_task("generator (Eq. 2)", total=config.epochs, status="")
        for _ in range(config.epochs):
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, config.batch_size):
                idx = order[start:start + config.batch_size]
                x, z = images[idx].to(device), latents[idx].to(device)
                loss = lp_loss(x, generator(z), config.p)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.item()) * idx.numel()
            losses.append(total / n)
            advance(progress, task, f"loss {losses[-1]:.5f}")
    generator.eval()
    if not torch.isfinite(torch.tensor(losses)).all():
        raise FloatingPointError(f"generator loss became non-finite: {losses[-3:]}")
    return losses


@torch.no_grad()
def generate(generator: LatentGenerator, latents: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """x_hat = G(z) in eval mode, batched, on CPU."""
    was_training = generator.training
    generator.eval()
    try:
        device = next(generator.parameters()).device
        parts = [generator(latents[i:i + batch_size].to(device)).cpu()
                 for i in range(0, latents.shape[0], batch_size)]
    finally:
        generator.train(was_training)
    return torch.cat(parts) if parts else torch.zeros((0, *generator.image_shape))


def reconstruction_mse(generator: LatentGenerator, data: ImageDataset, latents: torch.Tensor) -> float:
    """Per-pixel MSE between x and G(phi(x)), the number the paper reports (0.00757 / 0.00765 on MNIST)."""
    return float((generate(generator, latents) - data.images).pow(2).mean().item())
