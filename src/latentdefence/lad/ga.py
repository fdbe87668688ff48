"""GA, the baseline of LAD's Tables III and IV: unrestricted adversarial examples from an AC-GAN.

Song, Shu, Kushman, Ermon, *Constructing Unrestricted Adversarial Examples with Generative Models*
(NeurIPS 2018). An AC-GAN (Odena et al. 2017) learns to draw images of a chosen class; the attack
searches its noise space, starting from a random z0 and keeping the class code fixed at the source
class, for an image that the target model gets wrong while the AC-GAN's own auxiliary classifier still
sees the source class:

    L(z) = L0 + lambda1 * L1 + lambda2 * L2
    L0 = -log f(t | G(z, s))            (targeted)   or   -log(1 - f(s | G(z, s)))   (untargeted)
    L1 = mean_i max(|z_i - z0_i| - eps, 0)           (stay near z0, a soft box)
    L2 = -log c(s | G(z, s))                          (the auxiliary classifier keeps the source class)

Only examples that fool the model AND keep the auxiliary label count as successes (Song et al. also ask
humans; we have no annotators, see docs/lad.md). Their labels are the source class.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .._io import load_tensors, save_tensors
from .._progress import advance, make_progress
from .._seed import seed_everything
from ..attacks import AttackResult
from ..attacks.base import attack_success, frozen_eval
from ..data.base import ImageDataset


class ACGANGenerator(nn.Module):
    """G(z, y): noise (N, latent_dim) and class (N,) -> images (N, C, S, S) in [0, 1] (DCGAN-style, S % 4 == 0)."""

    def __init__(self, num_classes: int, image_shape: tuple[int, int, int], latent_dim: int = 100,
                 width: int = 64) -> None:
        super().__init__()
        channels, side, _ = image_shape
        if side % 4 or image_shape[1] != image_shape[2]:
            raise ValueError(f"AC-GAN needs square images with a side divisible by 4, got {image_shape}")
        self.num_classes, self.latent_dim, self.image_shape = num_classes, latent_dim, tuple(image_shape)
        self._stem = (2 * width, side // 4)
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.linear = nn.Sequential(nn.Linear(latent_dim, 2 * width * (side // 4) ** 2),
                                    nn.BatchNorm1d(2 * width * (side // 4) ** 2), nn.ReLU())
        self.body = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.BatchNorm2d(width), nn.ReLU(),   # S/2
            nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Sigmoid())                        # S

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"AC-GAN generator expects noise (N, {self.latent_dim}), got {tuple(z.shape)}")
        h = self.linear(z * self.embed(labels))                       # class code multiplies the noise (Odena)
        return self.body(h.view(-1, self._stem[0], self._stem[1], self._stem[1]))


class ACGANDiscriminator(nn.Module):
    """D(x) -> (real/fake logit (N,), auxiliary class logits (N, K))."""

    def __init__(self, num_classes: int, image_shape: tuple[int, int, int], width: int = 64) -> None:
        super().__init__()
        channels, side, _ = image_shape
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2), nn.Dropout(0.25),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2), nn.Dropout(0.25),
            nn.Flatten())
        features = 2 * width * (side // 4) ** 2
        self.source = nn.Linear(features, 1)
        self.aux = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.source(h).squeeze(1), self.aux(h)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The auxiliary classifier's logits c(. | x), the attack's check that x still shows its class."""
        return self.forward(x)[1]


@dataclass(frozen=True)
class ACGANConfig:
    """AC-GAN training (Adam 2e-4, beta1 0.5, as in DCGAN/AC-GAN; epochs per profile)."""

    epochs: int = 25
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    latent_dim: int = 100
    width: int = 64
    seed: int = 0


@dataclass
class ACGAN:
    """A trained AC-GAN: generator, discriminator with its auxiliary classifier, and its settings."""

    generator: ACGANGenerator
    discriminator: ACGANDiscriminator
    config: ACGANConfig

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images of the given classes from random noise (eval mode)."""
        self.generator.eval()
        z = torch.randn(labels.shape[0], self.config.latent_dim, generator=generator)
        device = next(self.generator.parameters()).device
        return self.generator(z.to(device), labels.to(device)).cpu()


def train_acgan(data: ImageDataset, config: ACGANConfig, num_classes: int | None = None) -> tuple[ACGAN, list[dict[str, float]]]:
    """Fit an AC-GAN on `data` (non-saturating GAN loss + auxiliary cross-entropy on real and fake). Returns
    (model, per-epoch {d_loss, g_loss, aux_accuracy_real})."""
    k = num_classes or int(data.labels.max()) + 1
    gen = seed_everything(config.seed)
    c, h, w = data.images.shape[1:]
    shape = (c, h, w)
    g_net, d_net = ACGANGenerator(k, shape, config.latent_dim, config.width), ACGANDiscriminator(k, shape, config.width)
    opt_g = torch.optim.Adam(g_net.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
    opt_d = torch.optim.Adam(d_net.parameters(), lr=config.lr, betas=(config.beta1, 0.999))
    bce, ce = nn.functional.binary_cross_entropy_with_logits, nn.functional.cross_entropy
    n, history = len(data), []
    with make_progress() as progress:
        task = progress.add_task("AC-GAN", total=config.epochs, status="")
        for _ in range(config.epochs):
            g_net.train(), d_net.train()
            sums = {"d_loss": 0.0, "g_loss": 0.0, "aux_accuracy_real": 0.0}
            order = torch.randperm(n, generator=gen)
            for start in range(0, n - config.batch_size + 1, config.batch_size):
                idx = order[start:start + config.batch_size]
                x, y = data.images[idx], data.labels[idx]
                fake_y = torch.randint(0, k, (len(idx),), generator=gen)
                fake = g_net(torch.randn(len(idx), config.latent_dim, generator=gen), fake_y)
                real_src, real_aux = d_net(x)
                fake_src, fake_aux = d_net(fake.detach())
                d_loss = (bce(real_src, torch.full_like(real_src, 0.9)) + bce(fake_src, torch.zeros_like(fake_src))
                          + ce(real_aux, y) + ce(fake_aux, fake_y))
                opt_d.zero_grad()
                d_loss.backward()
                opt_d.step()
                src, aux = d_net(fake)
                g_loss = bce(src, torch.ones_like(src)) + ce(aux, fake_y)
                opt_g.zero_grad()
                g_loss.backward()
                opt_g.step()
                sums["d_loss"] += d_loss.item() * len(idx)
                sums["g_loss"] += g_loss.item() * len(idx)
                sums["aux_accuracy_real"] += (real_aux.argmax(1) == y).sum().item()
            seen = max(1, (n // config.batch_size) * config.batch_size)
            history.append({key: value / seen for key, value in sums.items()})
            advance(progress, task, ", ".join(f"{key} {value:.4f}" for key, value in history[-1].items()))
    if not all(math.isfinite(h["d_loss"]) and math.isfinite(h["g_loss"]) for h in history):
        raise FloatingPointError(f"AC-GAN losses became non-finite: {history[-2:]}")
    return ACGAN(g_net.eval(), d_net.eval(), config), history


def save_acgan(path: str | os.PathLike[str], model: ACGAN, metadata: dict[str, Any] | None = None) -> None:
    """Both networks as one safetensors file; settings and shapes in its metadata."""
    tensors = {**{f"generator.{k}": v for k, v in model.generator.state_dict().items()},
               **{f"discriminator.{k}": v for k, v in model.discriminator.state_dict().items()}}
    meta = {"kind": "acgan", "config": asdict(model.config),
            "num_classes": model.generator.num_classes, "image_shape": list(model.generator.image_shape),
            **(metadata or {})}
    save_tensors(path, tensors, meta)


def load_acgan(path: str | os.PathLike[str]) -> tuple[ACGAN, dict[str, Any]]:
    """(AC-GAN in eval mode, metadata) from a file written by `save_acgan`."""
    tensors, meta = load_tensors(path)
    if meta.get("kind") != "acgan":
        raise ValueError(f"{path}: not an AC-GAN file (metadata kind is {meta.get('kind')!r})")
    config = ACGANConfig(**meta["config"])
    shape = tuple(meta["image_shape"])
    g_net = ACGANGenerator(meta["num_classes"], shape, config.latent_dim, config.width)
    d_net = ACGANDiscriminator(meta["num_classes"], shape, config.width)
    try:
        g_net.load_state_dict({k[len("generator."):]: v for k, v in tensors.items() if k.startswith("generator.")})
        d_net.load_state_dict({k[len("discriminator."):]: v for k, v in tensors.items()
                               if k.startswith("discriminator.")})
    except RuntimeError as err:
        raise ValueError(f"{path}: weights do not fit the recorded AC-GAN ({err})") from err
    return ACGAN(g_net.eval(), d_net.eval(), config), meta


class UnrestrictedAttack:
    """Song et al. (2018) unrestricted adversarial examples: a search in an AC-GAN's noise space.

    Threat model: no norm bound on the image (it is generated, not perturbed); z stays within a soft
    L-inf box of radius `z_eps` around a random z0. Defaults: Adam lr 0.01, lambda1 = lambda2 = 100,
    z_eps = 0.1, 200 steps (Song et al. use Adam with lr 0.01 and lambda1 = lambda2 = 100).
    Call `attack(model, sources, targets=None, generator=None)`: sources (N,) int64 classes to draw;
    targets (N,) for the targeted variant. Returns (AttackResult, auxiliary predictions (N,)); `success`
    requires that the model is fooled AND the auxiliary classifier keeps the source class; `norms` is
    ||z - z0||_inf.
    """

    def __init__(self, acgan: ACGAN, steps: int = 200, lr: float = 0.01, lambda1: float = 100.0,
                 lambda2: float = 100.0, z_eps: float = 0.1) -> None:
        if steps < 1 or lr <= 0 or z_eps < 0:
            raise ValueError(f"need steps >= 1, lr > 0, z_eps >= 0; got {steps}, {lr}, {z_eps}")
        self.acgan, self.steps, self.lr = acgan, steps, lr
        self.lambda1, self.lambda2, self.z_eps = lambda1, lambda2, z_eps

    def describe(self) -> dict[str, Any]:
        """The settings, for saved sets and results files."""
        return {"name": "GA", "paper": "Song et al. 2018", "steps": self.steps, "lr": self.lr,
                "lambda1": self.lambda1, "lambda2": self.lambda2, "z_eps": self.z_eps}

    def loss(self, logits: torch.Tensor, aux_logits: torch.Tensor, z: torch.Tensor, z0: torch.Tensor,
             sources: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        """Per-sample L0 + lambda1 L1 + lambda2 L2."""
        log_probs = logits.log_softmax(1)
        if targets is None:
            p_source = log_probs.gather(1, sources[:, None]).squeeze(1).exp()
            l0 = -torch.log1p(-p_source.clamp(max=1 - 1e-6))
        else:
            l0 = -log_probs.gather(1, targets[:, None]).squeeze(1)
        l1 = ((z - z0).abs() - self.z_eps).clamp_min(0).mean(1)
        l2 = nn.functional.cross_entropy(aux_logits, sources, reduction="none")
        return l0 + self.lambda1 * l1 + self.lambda2 * l2

    def __call__(self, model: nn.Module, sources: torch.Tensor, targets: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[AttackResult, torch.Tensor]:
        if sources.ndim != 1 or sources.dtype != torch.int64:
            raise ValueError(f"sources must be an int64 vector (N,), got {sources.dtype} {tuple(sources.shape)}")
        k = self.acgan.generator.num_classes
        if sources.numel() and (sources.min() < 0 or sources.max() >= k):
            raise ValueError(f"sources must be classes in [0, {k}), got range {int(sources.min())}..{int(sources.max())}")
        if targets is not None and targets.shape != sources.shape:
            raise ValueError(f"targets must be shaped like sources {tuple(sources.shape)}, got {tuple(targets.shape)}")
        g_net, d_net = self.acgan.generator.eval(), self.acgan.discriminator.eval()
        device = next(model.parameters()).device
        g_net.to(device), d_net.to(device)
        sources = sources.to(device)
        targets = targets.to(device) if targets is not None else None
        z0 = torch.randn(sources.shape[0], self.acgan.config.latent_dim, generator=generator).to(device)
        z = z0.clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=self.lr)
        with frozen_eval(model), frozen_eval(g_net), frozen_eval(d_net):
            for _ in range(self.steps):
                x = g_net(z, sources)
                loss = self.loss(model(x), d_net.classify(x), z, z0, sources, targets).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                images = g_net(z, sources)
                predictions, aux = model(images).argmax(1), d_net.classify(images).argmax(1)
        fooled = attack_success(predictions, sources if targets is None else targets, targeted=targets is not None)
        result = AttackResult(images.cpu(), (fooled & (aux == sources)).cpu(),
                              (z - z0).detach().abs().amax(1).cpu(), predictions.cpu())
        return result, aux.cpu()
