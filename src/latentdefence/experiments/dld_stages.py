"""DLD's cached stages: the data splits, F, the adversarial training sets, the encoder-decoders, the calibrated detector
and the attack sets, each built once per settings (`experiments.cache`); `build_dld` is what every DLD measurement
shares of them."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .._io import load_tensors, save_tensors, write_json
from ..data import calibration_split, load_dataset
from ..attacks.base import attack_in_batches, in_batches
from ..data.base import ImageDataset, Splits, default_cache_dir, default_data_dir
from ..dld import (CentroidAttack, DeepLatentDefence, EncoderTrainConfig, ensemble_pgd, load_encoders, save_encoders,
                   train_encoder)
from ..dld.encoders import EncoderDecoder
from ..dld.training import EncoderValidation, TrainingLog
from ..models import TappedModel, create_model
from .._timing import StageTimer
from .cache import ensure_stage, settings_key

if TYPE_CHECKING:  # `training` itself is imported lazily, where it is used
    from ..training.loop import Adversarial

from .dld_config import DLDExperimentConfig


@dataclass(frozen=True)
class DLDBuild:
    """What every DLD measurement shares, from the stage cache: the data splits, F, the encoder-decoders and the
    calibrated detector of one config (as `build_lad` / `LadBuild` for LAD), so the main run, the ablation and the
    adaptive evaluation build them one way."""

    config: DLDExperimentConfig
    cache_root: Path | None
    train: ImageDataset
    calibration: ImageDataset
    clean: ImageDataset
    classifier: TappedModel
    classifier_key: str
    encoders: dict[str, EncoderDecoder]
    encoders_dir: Path
    detector: DeepLatentDefence

    def grey_box(self, name: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The cached grey-box attack set `name` ("fgsm", "pgd" or "cw") against F on the clean evaluation images."""
        return grey_box_set(self.config, name, self.classifier, self.classifier_key, self.clean, self.cache_root,
                            generator)


def build_dld(config: DLDExperimentConfig, cache_root: Path | None = None,
              timer: StageTimer | None = None) -> DLDBuild:
    """Load the data and train (or load from the stage cache) F, the encoders and the calibrated detector;
    `timer` records the stages "data", "classifier", "encoders" and "detector"."""
    timer = timer or StageTimer()
    with timer.timed("data"):
        train, cal, clean = dld_data(config)
    with timer.timed("classifier"):
        classifier, classifier_key = dld_classifier(config, train, cache_root)
    with timer.timed("encoders"):
        encoders, enc_dir = dld_encoders(config, classifier, classifier_key, train, cache_root)
    with timer.timed("detector"):
        detector = dld_detector(config, classifier, encoders, train, cal, enc_dir)
    return DLDBuild(config, cache_root, train, cal, clean, classifier, classifier_key, encoders, enc_dir, detector)


def dld_data(config: DLDExperimentConfig) -> tuple[ImageDataset, ImageDataset, ImageDataset]:
    """Train split, and the test split cut into 750 calibration samples and the evaluation rest."""
    splits = dataset_splits(config.dataset, config.data_dir)
    cal, clean = calibration_split(splits.test, config.n_calibration, config.seed)
    return splits.train, cal, clean.head(config.n_clean)


def dataset_splits(dataset: str, data_dir: str | None) -> Splits:
    """A dataset's splits, loaded once per process and folder (a run reads them for its stages and its provenance);
    without `data_dir`, $LATENTDEFENCE_DATA_DIR as it is now."""
    folder = data_dir or default_data_dir()
    return _load_splits(dataset, str(folder) if folder and dataset != "mnist" else None,
                        default_cache_dir().as_posix())


@functools.lru_cache(maxsize=2)
def _load_splits(dataset: str, data_dir: str | None, _cache: str) -> Splits:
    return load_dataset(dataset, Path(data_dir) if data_dir else None)


def dld_classifier(config: DLDExperimentConfig, train: ImageDataset, root: Path | None) -> tuple[TappedModel, str]:
    """F from the given checkpoint, else adversarially trained once and cached."""
    from ..training import TrainConfig, checkpoint_digest, load_checkpoint, train_classifier

    if config.classifier_checkpoint:  # keyed by content: the same weights reuse caches from any path
        model = load_checkpoint(config.classifier_checkpoint)[0]
        return model.eval(), settings_key({"checkpoint_sha256": checkpoint_digest(config.classifier_checkpoint)})
    cs = config.classifier
    # images past max_train (n_validation of them) guard against catastrophic overfitting, as `train` does
    val = (train.subset(slice(cs.max_train, cs.max_train + config.n_validation))
           if cs.max_train and cs.max_train < len(train) else None)
    tc = TrainConfig(epochs=cs.epochs, batch_size=cs.batch_size, lr=cs.lr, adversarial=cs.adversarial,
                     eps=cs.eps, steps=cs.steps, step_size=cs.step_size, eps_ramp_epochs=cs.eps_ramp_epochs,
                     trades_beta=cs.trades_beta, schedule=cs.schedule, tail_epochs=cs.tail_epochs, seed=cs.seed,
                     optimizer=cs.optimizer, momentum=cs.momentum, weight_decay=cs.weight_decay, augment=cs.augment,
                     eval_samples=cs.eval_samples, eval_pgd_steps=cs.eval_pgd_steps)
    # TrainConfig's rule for fields added later (and a constant schedule): keys of stages built before still match
    unused = set(asdict(tc)) - set(tc.key_settings()) | ({"schedule"} if cs.schedule == "constant" else set())
    settings = {"dataset": config.dataset, **{k: v for k, v in cs.key_settings().items() if k not in unused},
                "validation": len(val) if val is not None else 0}
    path = ensure_stage("dld-classifier", settings, lambda d: train_classifier(
        create_model(cs.arch, **cs.model_kwargs()), train.head(cs.max_train), tc, val=val, checkpoint_dir=d), root)
    # keyed by content as a checkpoint is: a run given this F's copy with --classifier reuses every later stage
    return (load_checkpoint(path / "final")[0].eval(),
            settings_key({"checkpoint_sha256": checkpoint_digest(path / "final")}))


def dld_encoders(config: DLDExperimentConfig, classifier: TappedModel, classifier_key: str, train: ImageDataset,
                 root: Path | None) -> tuple[dict[str, EncoderDecoder], Path]:
    """Encoder-decoders for every tap, trained once per (classifier, settings) and cached with their training logs."""
    enc = config.encoder
    settings = {"classifier": classifier_key, "taps": list(config.taps), "latent_dim": config.latent_dim,
                **enc.cache_settings()}
    n_train = min(len(train), enc.max_train or len(train))
    needed = n_train + enc.validation
    if needed > len(train):
        raise ValueError(f"encoder training wants {n_train} + {enc.validation} validation images; train has {len(train)}")
    sets = {name: training_adversarial(config, name, classifier, classifier_key, train.head(needed), root)
            for name in enc.precomputed}
    val_slice = slice(n_train, needed)
    validation = EncoderValidation(train.subset(val_slice), tuple(s[val_slice] for s in sets.values())) \
        if enc.validation else None

    def build(d: Path) -> None:
        logs = {tap: TrainingLog() for tap in config.taps}
        eds = {tap: train_encoder(classifier, tap, train, config.latent_dim, enc,
                                  precomputed=[s[:n_train] for s in sets.values()], validation=validation,
                                  log=logs[tap]) for tap in config.taps}
        save_encoders(str(d / "encoders.safetensors"), eds)
        write_json(d / "training_log.json", {tap: log.as_dict() for tap, log in logs.items()})
    path = ensure_stage("dld-encoders", settings, build, root)
    return load_encoders(str(path / "encoders.safetensors")), path


_TRAINING_ATTACKS: dict[str, Callable[[EncoderTrainConfig], dict[str, Any]]] = {
    "pgd": lambda enc: {"eps": enc.eps, "steps": enc.precomputed_steps},
    "fgsm": lambda enc: {"eps": enc.eps},
    # CW-L2 (unbounded) from c = 10 with Adam lr 0.1: at the attack's defaults (c from 1e-3, lr 0.01) 100 steps barely
    # move MNIST's saturated pixels in tanh space (6% success on 200 training images against the cpu-profile F; these
    # settings: 52%, median L2 3.1); an image CW does not break stays clean in the set
    "cw": lambda enc: {"steps": enc.precomputed_cw_steps, "binary_search_steps": enc.precomputed_cw_searches,
                       "initial_const": 10.0, "lr": 0.1},
}   # each precomputed set's attack settings (its stage key adds any beyond eps and steps)


def training_adversarial(config: DLDExperimentConfig, name: str, classifier: TappedModel, classifier_key: str,
                         data: ImageDataset, root: Path | None) -> torch.Tensor:
    """Adversarial versions of training images against F alone (F is frozen: a fixed set), crafted once per F."""
    from ..attacks import create_attack

    enc = config.encoder
    if name not in _TRAINING_ATTACKS:
        raise ValueError(f"precomputed set {name!r} is not crafted here (detector_aware: `dld.hardening`); "
                         f"choose from {sorted(_TRAINING_ATTACKS)}")
    budget = _TRAINING_ATTACKS[name](enc)
    attack = create_attack(name, **budget, **({"generator": torch.Generator().manual_seed(config.seed)}
                                              if name == "pgd" else {}))
    settings = {"classifier": classifier_key, "attack": name, "eps": enc.eps, "steps": budget.get("steps", 1),
                **{k: v for k, v in budget.items() if k not in ("eps", "steps")}, "n": len(data), "seed": config.seed}

    def make() -> dict[str, torch.Tensor]:
        return {"images": attack_in_batches(classifier, attack, data.images, data.labels, batch_size=500,
                                            desc=f"attack train {name}").images}
    return _cached_images("dld-train-adversarial", settings, root, make)["images"]


def dld_detector(config: DLDExperimentConfig, classifier: TappedModel, encoders: dict[str, EncoderDecoder],
                 train: ImageDataset, cal: ImageDataset, enc_dir: Path) -> DeepLatentDefence:
    """Fit the pruned indexes and calibrate; the artifact is saved beside the encoders."""
    det = DeepLatentDefence(classifier, config.taps, k=config.k, latent_dim=config.latent_dim,
                            training=config.encoder, encoders=encoders)
    det.fit(train.head(config.index_max_train)).calibrate(cal, target_fpr=config.target_fpr)
    key = settings_key({"n": config.index_max_train, "fpr": config.target_fpr, "k": config.k})  # k variants coexist
    det.save(enc_dir / f"detector-{key}.safetensors")
    return det


def _cached_images(stage: str, settings: dict[str, Any], root: Path | None,
                   make: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Adversarial sets stored once per settings."""
    path = ensure_stage(stage, settings, lambda d: save_tensors(d / "images.safetensors", make()), root)
    return load_tensors(path / "images.safetensors")[0]


def grey_box_set(config: DLDExperimentConfig, name: str, classifier: TappedModel, classifier_key: str,
                 clean: ImageDataset, root: Path | None, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """FGSM / PGD / CW-L2 against F alone (the defence unknown to the attacker)."""
    from ..attacks import create_attack

    a = config.attacks
    data = clean.head(a.n[name])
    arguments = {"fgsm": {"eps": "eps"}, "pgd": {"eps": "eps", "step_size": "step_size", "steps": "pgd_steps",
                                                 "restarts": "pgd_restarts"},
                 "cw": {"steps": "cw_steps", "binary_search_steps": "cw_binary_search_steps"}}[name]
    attack = create_attack(name, **{arg: getattr(a, key) for arg, key in arguments.items()},
                           **({"generator": generator} if name == "pgd" else {}))
    used = tuple(arguments.values())
    settings = {"classifier": classifier_key, "attack": name, "settings": {k: getattr(a, k) for k in used},
                "batch_size": a.batch_size, "n": len(data), "seed": config.seed}

    def make() -> dict[str, torch.Tensor]:
        return {"images": attack_in_batches(classifier, attack, data.images, data.labels, batch_size=a.batch_size,
                                            desc=f"attack {name}").images, "labels": data.labels}
    return _cached_images(f"dld-attack-{name}", settings, root, make)


def adaptive_sweep(config: DLDExperimentConfig, classifier: TappedModel, encoders: dict[str, EncoderDecoder],
              detector: DeepLatentDefence, encoders_key: str, clean: ImageDataset, root: Path | None,
              generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Stage (i) ensemble PGD, then Eq. 10 for every alpha2 of the sweep (Fig. 3); keys 'alpha2=<v>'."""
    a = config.attacks
    data = clean.head(a.n["adaptive"])
    centroids = detector.centroids()
    settings = {"encoders": encoders_key, "settings": asdict(a), "n": len(data), "seed": config.seed,
                "index": config.index_max_train}

    def stage_one(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ensemble_pgd(classifier, encoders, x, y, eps=a.eps, step_size=a.step_size, steps=a.adaptive_steps,
                            restarts=a.adaptive_restarts, generator=generator).images

    def make() -> dict[str, torch.Tensor]:
        first = in_batches(stage_one, data.images, data.labels, batch_size=a.batch_size, desc="attack adaptive (i)")
        out = {"labels": data.labels, "ensemble_pgd": first}
        enc = {t: ed.encoder for t, ed in encoders.items()}
        for alpha2 in a.alpha2:
            attack = CentroidAttack(eps=a.eps, alpha1=a.alpha1, alpha2=alpha2, steps=a.centroid_steps,
                                    step_size=a.step_size, combine=a.centroid_combine)
            out[f"alpha2={alpha2:g}"] = in_batches(
                lambda x, start, y: attack(classifier, enc, centroids, x, start, y).images, data.images, first,
                data.labels, batch_size=a.batch_size)
        return out
    return _cached_images("dld-attack-adaptive", settings, root, make)
