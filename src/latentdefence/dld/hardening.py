"""Encoders trained against attackers who know the detector: Madry's recipe one level up (issue 24).

Grey-box training (`EncoderTrainConfig.precomputed`) shows the encoders PGD against F alone; an attacker who
knows DLD also steers the latents, and those examples were never in training. `harden` alternates, for
`rounds` rounds: (1) the detector as it stands (the current encoders, their pruned index, a threshold
calibrated on held-out *training* images) is attacked on a fresh seeded subset of training images by a
detector-aware attack (selective PGD on the soft k-NN surrogate by default, started from PGD on F, keep-best
by the detector's own decision); (2) every encoder is fine-tuned from its current weights on that subset, the
adversarial half drawn from those examples and from the PGD-on-F starts (so grey-box detection is kept), each
labelled with its true class. The cost is rounds x images per round x attack steps; `HardeningRound` records
how often the attack still evaded the detector of that round, which should fall if the encoders learn.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import torch

from .._progress import advance, make_progress
from .._seed import seed_everything
from ..attacks import PGD, create_attack
from ..data.base import ImageDataset
from ..models import TappedModel
from .detector import DeepLatentDefence
from .encoders import EncoderDecoder
from .training import EncoderTrainConfig, train_encoder


@dataclass(frozen=True)
class HardeningConfig:
    """How hard and how long the encoders are trained against the detector-aware attack (cpu-sized defaults)."""

    rounds: int = 3
    images_per_round: int = 2000          # training images attacked (and trained on) per round, fresh each round
    attack: str = "selective"             # a registered detector attack ("selective", "orthogonal", "guide_points")
    attack_steps: int = 20
    pgd_steps: int = 10                   # PGD on F alone: the selective attack's starts and the grey-box half
    eps: float = 0.3
    epochs: int = 2                       # encoder epochs over the round's images
    lr: float = 3e-4
    batch_size: int = 32
    target_fpr: float = 0.02              # each round's threshold, on the held-out training images
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("rounds", "images_per_round", "attack_steps", "pgd_steps", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"HardeningConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.eps <= 1 or not self.lr > 0 or not 0 < self.target_fpr < 1:
            raise ValueError(f"HardeningConfig needs 0 < eps <= 1, lr > 0, 0 < target_fpr < 1; got eps {self.eps}, "
                             f"lr {self.lr}, target_fpr {self.target_fpr}")


@dataclass(frozen=True)
class HardeningRound:
    """One round: how the detector of that round fared on the images it was then trained on."""

    round: int
    images: int
    threshold: float
    clean_fpr: float                  # on the held-out training images that set the threshold
    evaded_pgd: float                 # PGD on F alone: misclassified and not flagged
    evaded_attack: float              # the detector-aware attack (from the PGD starts): misclassified, not flagged
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def harden(classifier: TappedModel, encoders: Mapping[str, EncoderDecoder], index: ImageDataset,
           calibration: ImageDataset, config: HardeningConfig = HardeningConfig(), *, k: int = 10,
           base: EncoderTrainConfig | None = None) -> tuple[dict[str, EncoderDecoder], list[HardeningRound]]:
    """Fine-tuned copies of `encoders` (the given ones are unchanged) and a record per round.

    index: training images the detector indexes (and whose subsets are attacked); calibration: held-out training
    images that set each round's threshold. base: the encoders' training settings (margin, contrastive weight);
    the optimiser settings come from `config`.
    """
    if not encoders:
        raise ValueError("harden needs at least one encoder-decoder")
    if len(index) < config.images_per_round:
        raise ValueError(f"images_per_round {config.images_per_round} exceeds the {len(index)} index images")
    current = dict(encoders)
    generator = seed_everything(config.seed)
    rounds: list[HardeningRound] = []
    with make_progress() as progress:
        task = progress.add_task("hardening rounds", total=config.rounds, status="")
        for r in range(config.rounds):
            current, record = _round(classifier, current, index, calibration, config, k, base, r, generator)
            rounds.append(record)
            advance(progress, task, f"attack evaded on {100 * record.evaded_attack:.1f}% (PGD on F "
                                    f"{100 * record.evaded_pgd:.1f}%)")
    return current, rounds


def _round(classifier: TappedModel, current: dict[str, EncoderDecoder], index: ImageDataset,
           calibration: ImageDataset, config: HardeningConfig, k: int, base: EncoderTrainConfig | None, r: int,
           generator: torch.Generator) -> tuple[dict[str, EncoderDecoder], HardeningRound]:
    """Attack round r's detector on a fresh subset, then fine-tune every encoder on what the attack found."""
    start = time.perf_counter()
    detector = DeepLatentDefence(classifier, tuple(current), k=k, latent_dim=_latent_dim(current),
                                 encoders=current).fit(index).calibrate(calibration, config.target_fpr)
    rows = torch.randperm(len(index), generator=generator)[:config.images_per_round].sort().values
    subset = index.subset(rows)
    starts, adversarial, evaded = _attack(detector, subset, config, generator)
    train_config = replace(base or EncoderTrainConfig(), epochs=config.epochs, batch_size=config.batch_size,
                           lr=config.lr, eps=config.eps, adversarial=True, eps_ramp=0.0, max_train=None,
                           precomputed=("detector_aware", "pgd"), online_fraction=0.0, lr_schedule="constant",
                           validation=0, eval_every=None, patience=0, seed=config.seed + r)
    current = {tap: train_encoder(classifier, tap, subset, ed.latent_dim, train_config,
                                  precomputed=(adversarial, starts), start=ed) for tap, ed in current.items()}
    record = HardeningRound(r + 1, len(subset), float(detector.threshold_),
                            float(detector.calibration_scores_.gt(detector.threshold_).float().mean()),
                            evaded[0], evaded[1], round(time.perf_counter() - start, 1))
    return current, record


def _latent_dim(encoders: Mapping[str, EncoderDecoder]) -> int:
    """The one latent dimension the encoders share (DeepLatentDefence has one)."""
    dims = {ed.latent_dim for ed in encoders.values()}
    if len(dims) != 1:
        raise ValueError(f"encoders have different latent dimensions {sorted(dims)}")
    return dims.pop()


def _attack(detector: DeepLatentDefence, data: ImageDataset, config: HardeningConfig, generator: torch.Generator,
            batch_size: int = 250) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
    """(PGD-on-F examples, the detector-aware attack's kept iterates from them, the evaded fraction of each)."""
    pgd = PGD(eps=config.eps, steps=config.pgd_steps, generator=generator)
    attack = create_attack(config.attack, eps=config.eps, steps=config.attack_steps, generator=generator)
    starts, kept = [], []
    for i in range(0, len(data), batch_size):
        x, y = data.images[i:i + batch_size], data.labels[i:i + batch_size]
        s = pgd(detector.classifier, x, y).images
        starts.append(s)
        kept.append(attack(detector, x, y, starts=s).images)
    s_all, k_all = torch.cat(starts), torch.cat(kept)
    return s_all, k_all, (_evaded(detector, s_all, data.labels), _evaded(detector, k_all, data.labels))


def _evaded(detector: DeepLatentDefence, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction misclassified by F and not flagged by the detector."""
    out = detector.predict(images)
    return float(((out.predicted.cpu() != labels.cpu()) & ~out.is_adversarial.cpu().bool()).float().mean())
