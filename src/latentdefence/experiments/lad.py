"""LAD experiments (Zhou et al., Section IV): Tables II-IV (V-X on SVHN/CelebA) and Figs. 3-7, one function.

`run_lad(lad_config("cpu"), out_dir)` trains (or loads from the stage cache) the classifier, the black
model, the generator and the boundaries, generates the Large/Small Adv. sets, fine-tunes, crafts the
input-space attacks, and writes `results.json`, `report.md` and the figures to `out_dir`.
Profiles: `paper` (the paper's settings, for a GPU), `cpu` (documented reductions, ~1 h on 2 cores for
MNIST), `smoke` (tiny, seconds, for CI). Reductions are listed in docs/lad.md.
"""

from __future__ import annotations

import hashlib
import time
from functools import partial
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import attacks as attack_lib
from ..attacks import AttackResult
from ..attacks.base import attack_in_batches as _attack_batches
from .._io import (atomic_path, default_device, environment_info, git_revision, jsonable as _jsonable, load_tensors,
                   write_json)
from .._progress import track
from .._seed import seed_everything
from ..data import Splits, load_dataset
from ..data.base import ImageDataset
from ..evaluation.metrics import accuracy, batched_predict
from ..stats import wilson_interval
from ..lad import plots
from ..lad.attention_svm import TargetBoundaries, load_boundaries, save_boundaries
from ..lad.finetune import (FinetuneConfig, LadSplit, eps_label, finetune, finetune_set_statistics, make_split,
                            per_class_sample)
from ..lad.ga import ACGAN, ACGANConfig, UnrestrictedAttack, load_acgan, save_acgan, train_acgan
from ..lad.generation import GeneratedSet, every_other_target, generate_set, success_by_eps, transition
from ..lad.generator import (GeneratorConfig, LatentGenerator, create_generator, extract_latents, generate,
                             latent_head, load_generator, reconstruction_mse, save_generator, train_generator)
from ..models import TappedModel, create_model
from ..training import TrainConfig, load_checkpoint, save_checkpoint, train_classifier
from .._timing import StageTimer
from .cache import build_seconds, default_cache_root, ensure_stage
from .registry import register_pipeline

PROFILES = ("smoke", "cpu", "paper")
ATTACKS = ("fgsm", "jsma", "pgd", "cw", "ga")
TARGETED = frozenset({"jsma", "cw"})
PAPER_ATTACKS = {"mnist": ATTACKS, "svhn": ("fgsm", "pgd", "jsma"), "celeba": ("fgsm", "pgd")}  # Tables II-X


@dataclass(frozen=True)
class DatasetSpec:
    """Which loader, classifier, black model, latent tap and generator a dataset uses."""

    loader: str
    classifier: str
    black: str
    tap: str
    generator: str
    sized: bool = False     # architectures take image_size from the data (CelebA)
    scalable: bool = False  # classifier and black model take a width multiplier (svhn_net, dld_svhn, celeba_net)


SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec("mnist", "lenet5", "mnist_black", "fc1", "mnist"),
    "svhn": DatasetSpec("svhn", "svhn_net", "dld_svhn", "fc1", "svhn", scalable=True),
    "celeba": DatasetSpec("celeba-smile", "celeba_net", "celeba_net", "fc1", "celeba", sized=True, scalable=True),
}


@dataclass(frozen=True)
class AttackSettings:
    """Input-space baselines (paper: cleverhans; FGSM/PGD eps 0.3 untargeted, JSMA/CW targeted)."""

    fgsm_eps: float = 0.3
    pgd_eps: float = 0.3
    pgd_step_size: float = 0.01
    pgd_steps: int = 40
    jsma_theta: float = 1.0
    jsma_gamma: float = 0.1
    cw_steps: int = 1000
    cw_search_steps: int = 9
    ga_steps: int = 200               # GA (Song et al. 2018): Adam on the AC-GAN noise
    ga_lr: float = 0.01
    ga_lambda1: float = 100.0
    ga_lambda2: float = 100.0
    ga_z_eps: float = 0.1
    ga_candidates: int = 2            # noise draws per wanted example (only successes are kept)
    untargeted_per_class: int = 450   # 4500 MNIST images (Tables II, III)
    targeted_per_class: int = 50      # x (K - 1) targets = 4500 examples
    batch_size: int = 500


@dataclass(frozen=True)
class LadConfig:
    """Every setting of a LAD run; `lad_config(profile, dataset)` fills in the profile's values."""

    profile: str = "paper"
    dataset: str = "mnist"
    data_dir: str | None = None
    loader_kwargs: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    train_limit: int | None = None
    classifier: TrainConfig = TrainConfig(epochs=10, batch_size=64, lr=1e-3)
    black: TrainConfig = TrainConfig(epochs=10, batch_size=64, lr=1e-3, seed=1)
    acgan: ACGANConfig = ACGANConfig()
    generator: GeneratorConfig = GeneratorConfig()
    generator_refine: tuple[GeneratorConfig, ...] = ()  # further Eq. 2 phases from the trained G (an ablation row)
    generator_width: float = 1.0
    model_width: float = 1.0  # classifier and black model width (1 = the paper's; SVHN/CelebA smoke only)
    classifier_arch: str | None = None  # another classifier architecture (None = the dataset's; e.g. "lenet5_relu")
    generator_train_limit: int | None = None
    boundary_per_class: int = 20
    svm_epochs: int = 300
    svm_lr: float = 0.01
    svm_l2: float = 1e-3
    svm_kernel_size: int = 3
    strategy: str = "pairwise"
    eps_scale: str = "classifier"
    boundary_eps: float = 10.0
    generation_per_class: int = 50
    small_per_class: int = 10
    large_eps: tuple[float, ...] = (0.1, 2.0, 5.0, 7.0, 10.0, 15.0, 20.0)
    small_eps: tuple[float, ...] = (0.1, 1.6, 3.2, 5.5, 10.0, 20.0)
    finetune: FinetuneConfig = FinetuneConfig()
    finetune_seeds: tuple[int, ...] = (0,)  # fine-tuning seeds of the FGSM/PGD headline rows
    control_seeds: tuple[int, ...] = (0,)   # fine-tuning seeds of their same-budget controls
    long_epochs: int = 10                   # the ablation's longer fine-tuning rows and strong-budget controls
    rerun_per_class: int | None = None      # source images per class the white-box attacks are re-run from
    attacks: tuple[str, ...] = ATTACKS
    attack: AttackSettings = AttackSettings()
    table4_per_class: int = 450
    cache_root: str | None = None


def _spec(dataset: str) -> DatasetSpec:
    if dataset not in SPECS:
        raise KeyError(f"unknown LAD dataset {dataset!r}; choose one of {sorted(SPECS)}")
    return SPECS[dataset]


def lad_config(profile: str, dataset: str = "mnist", **overrides: Any) -> LadConfig:
    """The named profile's settings for `dataset`, with keyword overrides (e.g. data_dir=...)."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
    _spec(dataset)
    base = LadConfig(profile=profile, dataset=dataset, attacks=PAPER_ATTACKS[dataset])
    if profile == "cpu":
        base = replace(base, classifier=TrainConfig(epochs=3, batch_size=64), black=TrainConfig(epochs=2, batch_size=64,
                                                                                              seed=1),
                       generator=GeneratorConfig(epochs=8, batch_size=128), acgan=ACGANConfig(epochs=5, width=32),
                       svm_epochs=200, finetune=FinetuneConfig(epochs=3), finetune_seeds=(0, 1, 2),
                       control_seeds=(0, 1, 2), rerun_per_class=100,
                       attack=AttackSettings(pgd_steps=20, pgd_step_size=0.03, cw_steps=100, cw_search_steps=4,
                                             ga_steps=100, untargeted_per_class=200, targeted_per_class=10),
                       table4_per_class=200)
        if dataset != "mnist":
            base = replace(base, generator_width=0.25, train_limit=20_000,
                           loader_kwargs={"image_size": 64} if dataset == "celeba" else {})
    elif profile == "smoke":
        base = replace(base, classifier=TrainConfig(epochs=1, batch_size=32), black=TrainConfig(epochs=1, batch_size=32,
                                                                                              seed=1),
                       generator=GeneratorConfig(epochs=1, batch_size=32), generator_width=0.125, train_limit=256,
                       generator_train_limit=256,  # G reads splits.train: unbounded, all 73k SVHN images
                       acgan=ACGANConfig(epochs=1, batch_size=32, width=8, latent_dim=16),
                       boundary_per_class=3, svm_epochs=20, strategy="one_vs_rest", generation_per_class=1,
                       small_per_class=1,
                       large_eps=(0.1, 5.0, 20.0), small_eps=(0.1, 10.0), finetune=FinetuneConfig(epochs=1, batch_size=16),
                       attack=AttackSettings(pgd_steps=3, pgd_step_size=0.1, cw_steps=5, cw_search_steps=1,
                                             jsma_gamma=0.01, ga_steps=5, untargeted_per_class=2, targeted_per_class=1),
                       table4_per_class=2, long_epochs=2)
        if _spec(dataset).scalable:  # at full width every fine-tune copies, trains and saves ~50M weights (minutes)
            base = replace(base, model_width=0.125, loader_kwargs={"image_size": 32} if dataset == "celeba" else {})
    return replace(base, **overrides)


# Paper numbers (percent -> fraction) for the report, by dataset.
PAPER: dict[str, dict[str, dict[str, Any]]] = {
    "mnist": {
        "generator": {"train_mse": 0.00757, "test_mse": 0.00765},
        "table2": {"fgsm": (0.0177, 0.2167), "jsma": (0.0871, 0.3989), "pgd": (0.006, 0.0944), "cw": (0.9814, 0.9848)},
        "table3": {"fgsm": (0.4171, 0.4960), "jsma": (0.9391, 0.9244), "pgd": (0.2993, 0.3593), "ga": (0.9982, 0.9972),
                   "cw": (0.9912, 0.9938)},
        "table4": {"original": 0.9913, "fgsm": 0.9357, "jsma": 0.9571, "pgd": 0.9098, "cw": 0.9871, "ga": 0.9723,
                   "ours": 0.9934},
    },
    "svhn": {
        "generator": {},
        "table2": {"fgsm": (0.1720, 0.2160), "pgd": (0.3040, 0.3256), "jsma": (0.3578, 0.3740)},
        "table3": {"fgsm": (0.2500, 0.2780), "pgd": (0.1716, 0.1736), "jsma": (0.3404, 0.3496)},
        "table4": {"original": 0.9385, "jsma": 0.9327, "pgd": 0.9149, "fgsm": 0.9132, "ours": 0.9483},
    },
    "celeba": {
        "generator": {},
        "table2": {"fgsm": (0.5275, 0.5090), "pgd": (0.1225, 0.1175)},
        "table3": {"fgsm": (0.5265, 0.5280), "pgd": (0.1390, 0.3255)},
        "table4": {"original": 0.9140, "fgsm": 0.9120, "pgd": 0.9235, "ours": 0.9985},
    },
}


class _Stages(StageTimer):
    """Cached stages with wall times: a stage's directory is reused when its settings match."""

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.build_time_s: dict[str, float] = {}  # what each stage took to build, in this run or the one cached

    def run(self, stage: str, settings: Mapping[str, Any], build: Callable[[Path], None]) -> Path:
        """The stage's directory, built first unless a completed run with these settings exists."""
        path = ensure_stage(stage, settings, build, self.root)
        self.build_time_s[stage] = round(self.build_time_s.get(stage, 0.0) + (build_seconds(path) or 0.0), 1)
        return path


def _fingerprint(splits: Splits) -> str:
    """A short hash of the data, so cached stages never mix datasets."""
    digest = hashlib.sha256()
    for part in (splits.train, splits.test):
        digest.update(part.images.numpy().tobytes())
        digest.update(part.labels.numpy().tobytes())
    return digest.hexdigest()[:16]


def _arch_kwargs(spec: DatasetSpec, data: ImageDataset, width: float = 1.0) -> dict[str, Any]:
    """Keyword arguments of the dataset's architectures; width enters only when it is not 1 (older cache keys hold)."""
    if width != 1.0 and not spec.scalable:
        raise ValueError(f"model_width={width} needs scalable architectures; {spec.classifier} and {spec.black} "
                         "have a fixed width (use 1.0)")
    kwargs: dict[str, Any] = {"image_size": int(data.images.shape[-1])} if spec.sized else {}
    return {**kwargs, "width": width} if width != 1.0 else kwargs


def _trained_model(stages: _Stages, name: str, settings: dict[str, Any], arch: str, arch_kwargs: dict[str, Any],
                   train: ImageDataset, config: TrainConfig) -> TappedModel:
    """Train `arch` on `train` (resumable inside its stage directory) or load the cached checkpoint."""
    def build(path: Path) -> None:
        seed_everything(config.seed)
        model = create_model(arch, **arch_kwargs).to(default_device())
        train_classifier(model, train, config, checkpoint_dir=path)

    with stages.timed(name):
        model, _ = load_checkpoint(stages.run(f"lad-{name}", settings, build) / "final", map_location=default_device())
    return model.eval()


def _trained_generator(stages: _Stages, settings: dict[str, Any], config: LadConfig, classifier: TappedModel,
                       splits: Splits) -> tuple[LatentGenerator, dict[str, Any]]:
    """Train G (Eq. 2) on the classifier's latents of the training images, or load it; report train/test MSE.
    Each phase of `config.generator_refine` goes on training the previous phase's G, each a cached stage."""
    spec = SPECS[config.dataset]
    train = splits.train.head(config.generator_train_limit)

    def build(path: Path, phase: GeneratorConfig, parent: Path | None) -> None:
        z = extract_latents(classifier, spec.tap, train.images)
        if parent is None:
            seed_everything(phase.seed)
            gen = create_generator(spec.generator, latent_dim=z.shape[1], width=config.generator_width,
                                   **_arch_kwargs(spec, splits.train)).to(default_device())
            before = 0
        else:
            gen, meta = load_generator(parent / "generator.safetensors")
            gen, before = gen.to(default_device()), int(meta["epochs"])
        losses = train_generator(gen, z, train.images, phase)
        z_test = extract_latents(classifier, spec.tap, splits.test.images)
        save_generator(path / "generator.safetensors", gen, {
            "train_mse": reconstruction_mse(gen, train, z), "test_mse": reconstruction_mse(gen, splits.test, z_test),
            "latent_dim": z.shape[1], "final_loss": losses[-1], "epochs": before + len(losses),
            "train_images": len(train)})

    first = {k: v for k, v in settings.items() if k != "refine"}
    with stages.timed("generator"):
        paths = [stages.run("lad-generator", first, lambda p: build(p, config.generator, None))]
        for done, phase in enumerate(config.generator_refine, 1):
            chain = {**first, "refine": settings["refine"][:done]}
            paths.append(stages.run("lad-generator", chain, partial(build, phase=phase, parent=paths[-1])))
        gen, metrics = load_generator(paths[-1] / "generator.safetensors")
    if config.generator_refine:  # how the MSE fell phase by phase
        metrics["phases"] = [{k: load_tensors(p / "generator.safetensors")[1][k]
                              for k in ("epochs", "train_mse", "test_mse")} for p in paths]
    return gen.to(default_device()), metrics


def _boundaries(stages: _Stages, settings: dict[str, Any], config: LadConfig, classifier: TappedModel,
                test: ImageDataset, index: torch.Tensor) -> TargetBoundaries:
    """Fit (or load) the attention-SVM boundaries on the latents of test[index]."""
    tap = SPECS[config.dataset].tap

    def build(path: Path) -> None:
        z = extract_latents(classifier, tap, test.images[index])
        fitted = TargetBoundaries(strategy=config.strategy, kernel_size=config.svm_kernel_size, l2=config.svm_l2,
                                  epochs=config.svm_epochs, lr=config.svm_lr, seed=config.seed,
                                  eps_scale=config.eps_scale, boundary_eps=config.boundary_eps)
        fitted.fit(z, test.labels[index], head=latent_head(classifier, tap))
        save_boundaries(path / "boundaries.safetensors", fitted, {"fit_indices": index.tolist()})

    with stages.timed("boundaries"):
        return load_boundaries(stages.run("lad-boundaries", settings, build) / "boundaries.safetensors")[0]


def _generated(stages: _Stages, name: str, settings: dict[str, Any], make: Callable[[], GeneratedSet]) -> GeneratedSet:
    """A generated (or crafted) set, built once per settings."""
    with stages.timed(name):
        path = stages.run(f"lad-{name}", settings, lambda p: make().save(p / "set.safetensors"))
        return GeneratedSet.load(path / "set.safetensors")


def _finetuned(stages: _Stages, name: str, settings: dict[str, Any], base: TappedModel, clean: ImageDataset,
               adversarial: ImageDataset, config: FinetuneConfig) -> nn.Module:
    """Eq. 4 fine-tuning of `base` on `adversarial` (+ clean batches), cached."""
    def build(path: Path) -> None:
        save_checkpoint(path / "model", finetune(base, clean, adversarial, config), {"finetuned_on": name})

    with stages.timed("finetune"):
        model, _ = load_checkpoint(stages.run("lad-finetune", settings, build) / "model", map_location=default_device())
    return model.eval()


def _attack(name: str, s: AttackSettings, seed: int, clip: bool = True) -> attack_lib.Attack:
    """The baseline attack `name` with the run's settings (FGSM/PGD leave [0, 1] when `clip` is False)."""
    box: dict[str, Any] = {} if clip else {"clip": False}
    if not clip and name not in ("fgsm", "pgd"):
        raise ValueError(f"only FGSM and PGD can run unclipped, not {name!r}")
    settings: dict[str, dict[str, Any]] = {
        "fgsm": {"eps": s.fgsm_eps, **box},
        "pgd": {"eps": s.pgd_eps, "step_size": s.pgd_step_size, "steps": s.pgd_steps,
                "generator": torch.Generator().manual_seed(seed), **box},
        "cw": {"steps": s.cw_steps, "binary_search_steps": s.cw_search_steps, "targeted": True},
        "jsma": {"theta": s.jsma_theta, "gamma": s.jsma_gamma},
    }
    if name not in settings:
        raise KeyError(f"unknown attack {name!r}; LAD uses {sorted(settings)}")
    return attack_lib.create_attack(name, **settings[name])


def _craft(model: TappedModel, name: str, config: LadConfig, data: ImageDataset, pool: torch.Tensor,
           per_class: int, path: Path, acgan: ACGAN | None = None, draw: int = 0, clip: bool = True) -> None:
    """Adversarial examples of `name` against `model` from per-class samples of data[pool], saved to `path`
    (GA draws its images from the AC-GAN instead, with noise seeded by seed + `draw`)."""
    if name == "ga":
        if acgan is None:
            raise ValueError("the GA baseline needs a trained AC-GAN")
        _craft_ga(model, acgan, config, per_class, path, config.seed + draw)
        return
    gen = torch.Generator().manual_seed(config.seed)
    index = per_class_sample(data.labels, pool, per_class, gen)
    labels, targets = data.labels[index], None
    if name in TARGETED:
        rows, targets = every_other_target(labels, model.num_classes)
        index, labels = index[rows], labels[rows]
    attack = _attack(name, config.attack, config.seed, clip)
    result = _attack_batches(model, attack, data.images[index], labels, targets, config.attack.batch_size, name)
    attack_lib.save_adversarial_set(path, result, labels, attack=attack, targets=targets, source_indices=index,
                                    dataset=data.name)


def _craft_ga(model: TappedModel, acgan: ACGAN, config: LadConfig, per_class: int, path: Path, seed: int) -> None:
    """GA examples against `model`: `ga_candidates` noise draws per wanted example and class; the first
    `per_class` successes of each class are kept (labels = the class the AC-GAN drew)."""
    s = config.attack
    attack = UnrestrictedAttack(acgan, steps=s.ga_steps, lr=s.ga_lr, lambda1=s.ga_lambda1, lambda2=s.ga_lambda2,
                                z_eps=s.ga_z_eps)
    gen = torch.Generator().manual_seed(seed)
    sources = torch.arange(model.num_classes).repeat_interleave(per_class * s.ga_candidates)
    parts = [attack(model, sources[i:i + s.batch_size], generator=gen)[0]
             for i in track(range(0, len(sources), s.batch_size), "ga attack")]
    result = AttackResult.concat(parts)
    keep = torch.cat([torch.nonzero(result.success & (sources == c)).flatten()[:per_class]
                      for c in range(model.num_classes)])
    attack_lib.save_adversarial_set(path, result.select(keep), sources[keep], attack=attack.describe(), dataset="acgan",
                                    extra={"candidates": len(sources), "success_rate": result.success_rate})


def _trained_acgan(stages: _Stages, settings: dict[str, Any], config: LadConfig, train: ImageDataset) -> ACGAN:
    """The AC-GAN GA searches (trained on the training images only), or the cached one."""
    def build(path: Path) -> None:
        model, history = train_acgan(train, config.acgan)
        save_acgan(path / "acgan.safetensors", model, {"history": history, "train_images": len(train)})

    with stages.timed("acgan"):
        return load_acgan(stages.run("lad-acgan", settings, build) / "acgan.safetensors")[0]


def _crafted(stages: _Stages, settings: dict[str, Any], make: Callable[[Path], None]) -> attack_lib.AdversarialSet:
    """An input-space attack's adversarial set, crafted once per settings."""
    with stages.timed("attacks"):
        path = stages.run("lad-attacks", settings, lambda p: make(p / "set.safetensors"))
        return attack_lib.load_adversarial_set(path / "set.safetensors")


def _as_dataset(adv: attack_lib.AdversarialSet, name: str) -> ImageDataset:
    """Adversarial images with their original labels."""
    return ImageDataset(adv.images.float(), adv.labels, name, "adversarial")


def _model_settings(data: dict[str, Any], arch: str, arch_kwargs: dict[str, Any], cfg: TrainConfig) -> dict[str, Any]:
    return {"data": data, "arch": arch, "arch_kwargs": arch_kwargs, "train": cfg.key_settings()}


@dataclass
class LadBuild:
    """What every LAD measurement shares: trained models, boundaries, generated sets, the split, and the settings
    that key each cached stage (`keys`), so the main run and the ablation reuse one another's stages."""

    config: LadConfig
    stages: _Stages
    splits: Splits
    train: ImageDataset
    split: LadSplit
    keys: dict[str, Any]
    classifier: TappedModel
    black: TappedModel
    generator: LatentGenerator
    generator_metrics: dict[str, Any]
    boundaries: TargetBoundaries
    large: GeneratedSet
    small: GeneratedSet

    @property
    def evaluation(self) -> ImageDataset:
        """The held-out test images every accuracy is measured on."""
        return self.splits.test.subset(self.split.evaluation)

    def tuned(self, name: str, set_settings: dict[str, Any], adversarial: ImageDataset,
              finetune_config: FinetuneConfig | None = None, clean: ImageDataset | None = None) -> nn.Module:
        """The classifier fine-tuned by Eq. 4 on `adversarial` (+ `clean`, default the training images), cached."""
        cfg = finetune_config or self.config.finetune
        settings = {"base": self.keys["classifier"], "set": set_settings, "finetune": asdict(cfg), "name": name}
        return _finetuned(self.stages, name, settings, self.classifier, self.train if clean is None else clean,
                          adversarial, cfg)

    def crafted(self, name: str, target: str, where: str, per_class: int, attack: AttackSettings | None = None,
                acgan: ACGAN | None = None, clip: bool = True) -> attack_lib.AdversarialSet:
        """Attack `name` crafted against the classifier or the black model from evaluation or training images
        (FGSM/PGD outside [0, 1] when `clip` is False)."""
        model = self.classifier if target == "classifier" else self.black
        source, pool = ((self.splits.test, self.split.evaluation) if where == "evaluation"
                        else (self.train, torch.arange(len(self.train))))
        config = replace(self.config, attack=attack or self.config.attack)
        settings = {"model": self.keys[target], "attack": name, "params": asdict(config.attack), "pool": where,
                    "per_class": per_class, "split": self.keys["split"]}
        draw = int(where == "train")  # GA: Table IV's fine-tuning draws differ from the evaluated ones
        if name == "ga":
            settings.update(acgan=self.keys["acgan"], **({"draw": draw} if draw else {}))  # draw 0 keeps older keys
        if not clip:  # absent when clipped, so older keys hold
            settings["clip"] = False
        return _crafted(self.stages, settings, lambda p: _craft(model, name, config, source, pool, per_class, p, acgan,
                                                                draw, clip))

    def trained_classifier(self, train_config: TrainConfig,
                           extra: tuple[dict[str, Any], ImageDataset] | None = None) -> TappedModel:
        """The classifier's architecture trained from scratch with `train_config` (e.g. a fresh seed: the drift
        ceiling) on the training images, plus `extra`'s images when given (LAD's "augmenting the training dataset",
        keyed by `extra`'s settings), cached like the classifier itself."""
        spec = SPECS[self.config.dataset]
        arch = self.config.classifier_arch or spec.classifier
        kw = _arch_kwargs(spec, self.splits.test, self.config.model_width)
        data, train = self.keys["data"], self.train
        if extra is not None:
            data = {**data, "extra": extra[0]}
            train = ImageDataset(torch.cat([train.images, extra[1].images]), torch.cat([train.labels, extra[1].labels]),
                                 train.name, "train+extra")
        return _trained_model(self.stages, "classifier", _model_settings(data, arch, kw, train_config), arch, kw, train,
                              train_config)


def build_lad(config: LadConfig, data: Splits | None = None) -> LadBuild:
    """Train (or load from the stage cache) the classifier, black model, generator, boundaries and both sets."""
    spec = _spec(config.dataset)
    stages = _Stages(Path(config.cache_root) if config.cache_root else default_cache_root())
    with stages.timed("data"):
        splits = data or load_dataset(spec.loader, Path(config.data_dir) if config.data_dir else None,
                                      **dict(config.loader_kwargs))
        train = splits.train.head(config.train_limit)
        data_settings = {"dataset": config.dataset, "fingerprint": _fingerprint(splits), "train_limit": config.train_limit}
    test = splits.test
    split = make_split(test.labels, boundary_per_class=config.boundary_per_class,
                       generation_per_class=config.generation_per_class, small_per_class=config.small_per_class,
                       seed=config.seed)
    split_settings = {"data": data_settings, "boundary": config.boundary_per_class, "seed": config.seed,
                      "generation": config.generation_per_class, "small": config.small_per_class}
    kw = _arch_kwargs(spec, test, config.model_width)
    arch = config.classifier_arch or spec.classifier
    clf_settings = _model_settings(data_settings, arch, kw, config.classifier)
    classifier = _trained_model(stages, "classifier", clf_settings, arch, kw, train, config.classifier)
    black_settings = _model_settings(data_settings, spec.black, kw, config.black)
    black = _trained_model(stages, "black", black_settings, spec.black, kw, train, config.black)
    gen_settings = {"classifier": clf_settings, "generator": asdict(config.generator), "width": config.generator_width,
                    "limit": config.generator_train_limit}
    if config.generator_refine:  # absent otherwise, so unrefined generators keep their cache keys
        gen_settings["refine"] = [asdict(phase) for phase in config.generator_refine]
    generator, gen_metrics = _trained_generator(stages, gen_settings, config, classifier, splits)
    bnd_settings = {"classifier": clf_settings, "split": split_settings, "strategy": config.strategy,
                    "svm": [config.svm_epochs, config.svm_lr, config.svm_l2, config.svm_kernel_size],
                    "eps_scale": [config.eps_scale, config.boundary_eps]}
    boundaries = _boundaries(stages, bnd_settings, config, classifier, test, split.boundary)

    def lad_set(part: torch.Tensor, eps: tuple[float, ...]) -> Callable[[], GeneratedSet]:
        return lambda: generate_set(classifier, spec.tap, generator, boundaries, test, part, eps)

    large_settings = {"boundaries": bnd_settings, "generator": gen_settings, "eps": config.large_eps, "part": "generation"}
    large = _generated(stages, "large-adv", large_settings, lad_set(split.generation, config.large_eps))
    small_settings = {**large_settings, "eps": config.small_eps, "part": "small"}
    small = _generated(stages, "small-adv", small_settings, lad_set(split.small, config.small_eps))
    keys = {"data": data_settings, "split": split_settings, "classifier": clf_settings, "black": black_settings,
            "generator": gen_settings, "boundaries": bnd_settings, "large": large_settings, "small": small_settings,
            "acgan": {"data": data_settings, "acgan": asdict(config.acgan)}}
    return LadBuild(config, stages, splits, train, split, keys, classifier, black, generator, gen_metrics, boundaries,
                    large, small)


@dataclass(frozen=True)
class EvalSets:
    """The sets a fine-tuned model is scored on: white-box sets crafted on the ORIGINAL classifier (the paper's
    Table II reading), transfer sets crafted on the black model (Table III), and the source images the white-box
    attacks are re-run from against the fine-tuned model itself (the real white-box number)."""

    clean: ImageDataset
    white: dict[str, ImageDataset]
    transfer: dict[str, ImageDataset]
    rerun: dict[str, ImageDataset]
    attack: AttackSettings
    clip: bool = True  # False: FGSM/PGD sets and re-runs leave [0, 1] (cleverhans' default)


def eval_sets(b: LadBuild, names: tuple[str, ...] = ("fgsm", "pgd"), attack: AttackSettings | None = None,
              rerun_per_class: int | None = None, clip: bool = True) -> EvalSets:
    """FGSM/PGD (untargeted) evaluation sets from the evaluation images; re-runs on the first `rerun_per_class`
    source images of each class of the white-box set (all when None); unclipped sets and re-runs when `clip` is False."""
    s = attack or b.config.attack
    white, transfer, rerun = {}, {}, {}
    for name in names:
        w = b.crafted(name, "classifier", "evaluation", s.untargeted_per_class, s, clip=clip)
        white[name] = _as_dataset(w, name)
        transfer[name] = _as_dataset(b.crafted(name, "black", "evaluation", s.untargeted_per_class, s, clip=clip), name)
        keep = torch.cat([torch.nonzero(w.labels == c).flatten()[:rerun_per_class] for c in torch.unique(w.labels)])
        rerun[name] = b.splits.test.subset(w.source_indices[keep.sort().values])
    return EvalSets(b.evaluation, white, transfer, rerun, s, clip)


def _correct(model: nn.Module, data: ImageDataset) -> dict[str, Any]:
    """Accuracy with its count and 95% Wilson interval."""
    hits = int((batched_predict(model, data.images, 500) == data.labels).sum()) if len(data) else 0
    return {"accuracy": hits / len(data) if len(data) else None, "n": len(data),
            "ci95": list(wilson_interval(hits, len(data)))}


def score(model: nn.Module, sets: EvalSets, seed: int = 0) -> dict[str, Any]:
    """Clean, white-box (fixed sets and re-run against `model`) and transfer accuracy of `model`."""
    rerun = {}
    for name, data in sets.rerun.items():
        result = _attack_batches(model, _attack(name, sets.attack, seed, sets.clip), data.images, data.labels, None,
                                 sets.attack.batch_size, f"{name} re-run")
        hits = int((result.predictions == data.labels).sum())
        rerun[name] = {"accuracy": hits / len(data), "n": len(data), "ci95": list(wilson_interval(hits, len(data)))}
    return {"clean": _correct(model, sets.clean), "white": {n: _correct(model, d) for n, d in sets.white.items()},
            "rerun": rerun, "transfer": {n: _correct(model, d) for n, d in sets.transfer.items()}}


def _first_per_class(labels: torch.Tensor, per_class: int) -> torch.Tensor:
    """Row indices of the first `per_class` rows of each class, in order."""
    rank = torch.zeros_like(labels)
    for c in torch.unique(labels):
        rows = torch.nonzero(labels == c).flatten()
        rank[rows] = torch.arange(rows.numel())
    return torch.nonzero(rank < per_class).flatten()


def reconstruction_control(b: LadBuild, mirror: GeneratedSet, mirror_settings: dict[str, Any]
                           ) -> tuple[dict[str, Any], ImageDataset]:
    """The reconstruction control of a LAD set: plain G(phi(x)) of the same sources (eps 0), with its cache settings."""
    sources = b.splits.test.images[mirror.source_index]
    recon = generate(b.generator, extract_latents(b.classifier, SPECS[b.config.dataset].tap, sources))
    return ({"control": "reconstruction", "of": mirror_settings},
            ImageDataset(recon, mirror.labels, "reconstruction", "generated"))


def control_sets(b: LadBuild, mirror: GeneratedSet, mirror_settings: dict[str, Any]
                 ) -> dict[str, tuple[dict[str, Any], ImageDataset]]:
    """The same-budget controls for a LAD fine-tuning set: its generated images replaced by plain reconstructions
    G(phi(x)) of the same sources (eps 0), by the source images themselves, and by as many PGD or FGSM examples
    (the positive controls) crafted against the classifier from training images."""
    k = b.classifier.num_classes
    sources = b.splits.test.images[mirror.source_index]
    out: dict[str, tuple[dict[str, Any], ImageDataset]] = {
        "reconstruction": reconstruction_control(b, mirror, mirror_settings),
        "clean": ({"control": "clean", "of": mirror_settings}, ImageDataset(sources, mirror.labels, "clean", "test"))}
    wanted = -(-len(mirror) // k)
    per_class = max(-(-len(b.small) // k), wanted)  # one crafted set serves every mirror (Small Adv. is the largest)
    for name in ("pgd", "fgsm"):
        adv = b.crafted(name, "classifier", "train", per_class)
        out[name] = ({"control": name, "per_class": wanted, "params": asdict(b.config.attack)},
                     _as_dataset(adv, name).subset(_first_per_class(adv.labels, wanted)))
    return out


def set_statistics(b: LadBuild, generated: GeneratedSet) -> dict[str, Any]:
    """`finetune_set_statistics` of a generated set against its source test images, with the Eq. 3 rate."""
    stats = finetune_set_statistics(b.classifier, generated.as_dataset(), b.splits.test.images[generated.source_index])
    return {**stats, "eq3_holds": float(generated.consistent.double().mean())}


def _seeded(config: LadConfig, seeds: tuple[int, ...]) -> list[FinetuneConfig]:
    return [replace(config.finetune, seed=s) for s in seeds]


def accuracy_at(scores: dict[str, Any], key: str) -> float:
    """The accuracy at 'clean' or 'group/attack' (e.g. 'rerun/fgsm') of a `score` result."""
    node: Any = scores
    for part in key.split("/"):
        node = node[part]
    return node["accuracy"]


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed 0's scores (with Wilson intervals) plus per-seed accuracies and their mean for every metric."""
    keys = ["clean"] + [f"{group}/{name}" for group in ("white", "rerun", "transfer") for name in runs[0][group]]
    seeds = {key: [accuracy_at(run, key) for run in runs] for key in keys}
    return {**runs[0], "seeds": seeds, "mean": {k: sum(v) / len(v) for k, v in seeds.items()}}


def headline(b: LadBuild, sets: EvalSets, name: str, set_settings: dict[str, Any], generated: GeneratedSet
             ) -> dict[str, Any]:
    """A LAD model (at every fine-tuning seed) beside its same-budget controls, scored and differenced."""
    lad = _summary([score(b.tuned(name, set_settings, generated.as_dataset(), cfg), sets, cfg.seed)
                    for cfg in _seeded(b.config, b.config.finetune_seeds)])
    controls = {}
    for control, (settings, data) in control_sets(b, generated, set_settings).items():
        controls[control] = _summary([score(b.tuned(f"{name}-{control}", settings, data, cfg), sets, cfg.seed)
                                      for cfg in _seeded(b.config, b.config.control_seeds)])
    minus = {c: {k: lad["mean"][k] - v["mean"][k] for k in lad["mean"]} for c, v in controls.items()}
    return {"lad": lad, "controls": controls, "lad_minus_control": minus}


def run_lad(config: LadConfig, out_dir: str | Path, data: Splits | None = None) -> dict[str, Any]:
    """Run every LAD stage for `config`, write results.json, report.md and figures to out_dir; return results."""
    start = time.perf_counter()
    revision = git_revision()  # the code that runs, not whatever HEAD is when the run ends
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    b = build_lad(config, data)
    stages, splits, split, train, test = b.stages, b.splits, b.split, b.train, b.splits.test
    classifier, black, large, small = b.classifier, b.black, b.large, b.small
    ft = {eps: b.tuned(f"FT-{eps_label(eps)}", b.keys["large"], large.select(large.eps == eps).as_dataset())
          for eps in config.large_eps}
    adv_model = b.tuned("Adv", b.keys["small"], small.as_dataset())
    ft_first = ft[config.large_eps[0]]
    acgan = _trained_acgan(stages, b.keys["acgan"], config, train) if "ga" in config.attacks else None

    def per_attack(name: str) -> dict[str, Any]:
        per_class = config.attack.targeted_per_class if name in TARGETED else config.attack.untargeted_per_class
        white = b.crafted(name, "classifier", "evaluation", per_class, acgan=acgan)
        transfer = b.crafted(name, "black", "evaluation", per_class, acgan=acgan)
        t4_per_class = config.attack.targeted_per_class if name in TARGETED else config.table4_per_class
        t4_set = b.crafted(name, "classifier", "train", t4_per_class, acgan=acgan)
        t4_model = b.tuned(f"attack-{name}", {"attack_set": name, "per_class": t4_per_class,
                                              "params": asdict(config.attack)}, _as_dataset(t4_set, name)) \
            if len(t4_set) else None  # GA may find no example at smoke scale
        with stages.timed("evaluate"):
            return {"table2": _row(classifier, adv_model, _as_dataset(white, name)),
                    "table3": _row(classifier, ft_first, _as_dataset(transfer, name)),
                    "table4": {"accuracy": _acc(t4_model, test.subset(split.evaluation)) if t4_model else None,
                               "n_train": len(t4_set)},
                    "search": {part: {"candidates": adv.metadata["candidates"], "success_rate": adv.metadata["success_rate"]}
                               for part, adv in (("white", white), ("transfer", transfer), ("table4", t4_set))}
                    if name == "ga" else None,
                    "white": white}

    attack_rows = {name: per_attack(name) for name in config.attacks}
    with stages.timed("controls"):
        sets = eval_sets(b, tuple(n for n in ("fgsm", "pgd") if n in config.attacks), None, config.rerun_per_class)
        first = config.large_eps[0]
        headlines = {"table2": headline(b, sets, "Adv", b.keys["small"], small),
                     "table3": headline(b, sets, f"FT-{eps_label(first)}", b.keys["large"], large.select(large.eps == first))}
    with stages.timed("evaluate"):
        evaluation = b.evaluation
        table4 = {"original": _acc(classifier, evaluation), "ours": _acc(ft_first, evaluation),
                  "ours_model": f"FT-{eps_label(config.large_eps[0])}", "adv_model": _acc(adv_model, evaluation),
                  "n": len(evaluation), **{n: r["table4"]["accuracy"] for n, r in attack_rows.items()},
                  "n_train": {n: r["table4"]["n_train"] for n, r in attack_rows.items()}}
        fig5 = success_by_eps(large, classifier.num_classes)
        fig7 = _fig7(config, classifier, adv_model, ft, large, evaluation)
        original = score(classifier, sets)
        stats = {"small_adv": set_statistics(b, small),
                 "large_adv": {eps_label(eps): set_statistics(b, large.select(large.eps == eps)) for eps in config.large_eps}}
    with stages.timed("figures"):
        _figures(out, config, classifier, b.generator, b.boundaries, splits, split, large, attack_rows, fig5, fig7)
    table2 = {n: r["table2"] for n, r in attack_rows.items()}
    table3 = {n: r["table3"] for n, r in attack_rows.items()}
    for table, rows, group in (("table2", table2, "white"), ("table3", table3, "transfer")):
        lad = headlines[table]["lad"]
        for name, row in rows.items():
            row["original_ci95"] = _ci(row["original"], row["n"])
            row["finetuned_ci95"] = _ci(row["finetuned"], row["n"])
            if name in lad[group]:
                row["finetuned_seeds"] = lad["seeds"][f"{group}/{name}"]
            if table == "table2" and name in lad["rerun"]:
                row["finetuned_rerun"] = lad["rerun"][name]["accuracy"]
                row["finetuned_rerun_ci95"] = lad["rerun"][name]["ci95"]
                row["finetuned_rerun_seeds"] = lad["seeds"][f"rerun/{name}"]
                row["original_rerun"] = original["rerun"][name]["accuracy"]
                row["rerun_n"] = lad["rerun"][name]["n"]
    results = {
        "experiment": f"lad-{config.dataset}", "profile": config.profile,
        "generator": {k_: b.generator_metrics[k_] for k_ in ("train_mse", "test_mse", "epochs", "train_images", "latent_dim")},
        "table2": table2, "table3": table3,
        "table4": table4, "fig5": fig5, "fig7": fig7,
        "models": {"table2_finetuned": "Adv (Small Adv. set)", "table3_finetuned": table4["ours_model"]},
        **({"ga_search": attack_rows["ga"]["search"]} if "ga" in attack_rows else {}),
        "sets": {"large_adv": len(large), "small_adv": len(small)},
        "finetune_sets": stats, "original_scores": original, "baselines": headlines,
        "split": {name: idx.tolist() for name, idx in split.as_dict().items()},
        "settings": _jsonable(asdict(config)), "seed": config.seed,
        "dataset_sizes": {"train": len(train), "test": len(test), "evaluation": len(split.evaluation)},
        "git_revision": revision, "environment": environment_info(),
        "wall_time_s": {**stages.wall_time_s, "total": time.perf_counter() - start},
        "stage_build_time_s": stages.build_time_s,
    }
    write_json(out / "results.json", results)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_report(results, PAPER.get(config.dataset, {})))
    return results


def _ci(rate: float | None, n: int) -> list[float] | None:
    """95% Wilson interval of an accuracy over n images."""
    return None if rate is None else list(wilson_interval(round(rate * n), n))


def _acc(model: nn.Module, data: ImageDataset) -> float | None:
    """Accuracy on `data`; None for an empty set (e.g. GA found no example)."""
    return accuracy(model, data.images, data.labels) if len(data) else None


def _row(original: nn.Module, finetuned: nn.Module, data: ImageDataset) -> dict[str, Any]:
    """Accuracy (original label) of the original and fine-tuned models on one adversarial set."""
    return {"original": _acc(original, data), "finetuned": _acc(finetuned, data), "n": len(data)}


def _fig7(config: LadConfig, classifier: nn.Module, adv_model: nn.Module, ft: dict[float, nn.Module],
          large: GeneratedSet, evaluation: ImageDataset) -> dict[str, Any]:
    """Fig. 7: clean accuracy of FT-eps per eps; accuracy of original and Adv. model on each Large Adv. set."""
    per_eps = [large.select(large.eps == eps).as_dataset() for eps in config.large_eps]
    return {"eps": list(config.large_eps),
            "clean_accuracy": {"original": _acc(classifier, evaluation),
                               "finetuned": [_acc(ft[eps], evaluation) for eps in config.large_eps]},
            "adversarial_accuracy": {"original": [_acc(classifier, d) for d in per_eps],
                                     "adv_model": [_acc(adv_model, d) for d in per_eps]}}


def _figures(out: Path, config: LadConfig, classifier: TappedModel, generator: LatentGenerator,
             boundaries: TargetBoundaries, splits: Splits, split: LadSplit, large: GeneratedSet,
             attack_rows: dict[str, dict[str, Any]], fig5: dict[str, list], fig7: dict[str, Any]) -> None:
    """Figs. 3-7 as PNG."""
    spec, n = SPECS[config.dataset], 10
    rows, labels = [], []
    for name, part in (("train", splits.train.head(n)), ("test", splits.test.subset(split.evaluation[:n]))):
        recon = generate(generator, extract_latents(classifier, spec.tap, part.images))
        rows += [part.images, recon]
        labels += [f"{name}", f"G(phi({name}))"]
    plots.image_grid(out / "fig3_reconstructions.png", rows, labels, title="Fig. 3: generator reconstructions")
    rows, labels, titles = [], [], []
    for name, row in attack_rows.items():
        white = row["white"]
        rows.append(white.images[:n])
        labels.append(name.upper())
        titles.append([f"{int(y)}>{int(p)}" for y, p in zip(white.labels[:n], white.predictions[:n])])
    for eps in config.large_eps[1::2]:
        chosen = large.select((large.eps == eps) & (large.targets == (large.labels + 1) % (int(large.labels.max()) + 1)))
        rows.append(chosen.images[:n])
        labels.append(f"LAD eps={eps:g}")
        titles.append([f"{int(y)}>{int(p)}" for y, p in zip(chosen.labels[:n], chosen.image_predictions[:n])])
    plots.image_grid(out / "fig4_examples.png", rows, labels, titles, "Fig. 4: label>predicted class above each image")
    plots.success_heatmap(out / "fig5_success_rate.png", fig5)
    _fig6(out, config, classifier, generator, boundaries, splits.test, split)
    plots.accuracy_vs_eps(out / "fig7_accuracy_vs_eps.png", fig7)


def _fig6(out: Path, config: LadConfig, classifier: TappedModel, generator: LatentGenerator,
          boundaries: TargetBoundaries, test: ImageDataset, split: LadSplit) -> None:
    """Fig. 6: transitions of two images toward a target as eps grows (eps and prediction above each)."""
    k = int(test.labels.max()) + 1
    eps_values = torch.linspace(0, max(config.large_eps), 11).tolist()
    rows, labels, titles = [], [], []
    for source in range(min(2, k)):
        idx = int(split.generation[test.labels[split.generation] == source][0])
        target = (source + k // 2) % k
        images, preds = transition(classifier, SPECS[config.dataset].tap, generator, boundaries, test.images[idx],
                                   source, target, eps_values)
        rows.append(images)
        labels.append(f"{source} -> {target}")
        titles.append([f"{e:.0f}: {int(p)}" for e, p in zip(eps_values, preds)])
    plots.image_grid(out / "fig6_transitions.png", rows, labels, titles, "Fig. 6: eps: predicted class")


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _diff(ours: float | None, paper: float | None) -> str:
    return "—" if ours is None or paper is None else f"{100 * (ours - paper):+.2f}"


def _ci_text(ci: list[float] | None) -> str:
    return "" if not ci else f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _seeds_text(values: list[float] | None) -> str:
    return "—" if not values else ", ".join(f"{100 * v:.2f}" for v in values)


def _two_readings(results: dict[str, Any]) -> list[str]:
    """Table II read two ways: the paper's (sets crafted on the original LeNet) and attacks re-run on each model."""
    rows = {n: r for n, r in results["table2"].items() if "finetuned_rerun" in r}
    if not rows:
        return []
    lines = ["", "## White-box, two readings (Table II model, 95% Wilson intervals, fine-tuning seeds)", "",
             "'fixed' = the paper's reading: sets crafted once on the ORIGINAL LeNet, which measures how far fine-tuning "
             "moved the model. 're-run' = the attack run again against each model (the real white-box number), from "
             f"{results['settings']['rerun_per_class'] or 'all'} evaluation images per class.", "",
             "| attack | original, fixed | Adv, fixed | Adv, fixed, per seed | original, re-run | Adv, re-run "
             "| Adv, re-run, per seed |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        rerun_n = r["rerun_n"]
        lines.append(f"| {name} | {_pct(r['original'])}{_ci_text(r['original_ci95'])} | {_pct(r['finetuned'])}"
                     f"{_ci_text(r['finetuned_ci95'])} | {_seeds_text(r.get('finetuned_seeds'))} | "
                     f"{_pct(r['original_rerun'])}{_ci_text(_ci(r['original_rerun'], rerun_n))} | "
                     f"{_pct(r['finetuned_rerun'])}{_ci_text(r['finetuned_rerun_ci95'])} | "
                     f"{_seeds_text(r.get('finetuned_rerun_seeds'))} |")
    return lines


def _controls_section(results: dict[str, Any]) -> list[str]:
    """LAD minus each same-budget control, mean over fine-tuning seeds, in percentage points."""
    if "baselines" not in results:
        return []
    lines = ["", "## LAD minus same-budget controls (pp; LAD: mean over fine-tuning seeds "
             f"{list(results['settings']['finetune_seeds'])}, controls: seeds {list(results['settings']['control_seeds'])})",
             "",
             "Each control replaces the generated images by: plain reconstructions G(phi(x)) of the same sources "
             "(eps 0); the source images themselves; as many PGD / FGSM examples crafted against LeNet from training "
             "images (positive controls). Same size, alpha, epochs and learning rate. Positive = LAD better."]
    for table, model in (("table2", "Adv"), ("table3", results["models"]["table3_finetuned"])):
        block = results["baselines"][table]
        keys = list(block["lad"]["mean"])
        lines += ["", f"{model} (accuracy %, mean over seeds):", "",
                  "| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys),
                  f"| LAD ({model}) | " + " | ".join(f"{100 * block['lad']['mean'][k]:.2f}" for k in keys) + " |"]
        for control, scores in block["controls"].items():
            lines.append(f"| {control} | " + " | ".join(f"{100 * scores['mean'][k]:.2f}" for k in keys) + " |")
        for control, diff in block["lad_minus_control"].items():
            lines.append(f"| LAD minus {control} | " + " | ".join(f"{100 * diff[k]:+.2f}" for k in keys) + " |")
    return lines


def _sets_section(results: dict[str, Any]) -> list[str]:
    """What the fine-tuning sets hold: size, share LeNet gets wrong, distance to source, logit margin."""
    if "finetune_sets" not in results:
        return []
    lines = ["", "## What goes into fine-tuning", "",
             "Per set: size; fraction the original LeNet misclassifies; L2 and L-inf pixel distance to the source image "
             "(median [q25, q75]); LeNet's logit margin, true label minus best other (median [q25, q75]; < 0 = "
             "misclassified, near 0 = near the boundary); share where Eq. 3 holds.", "",
             "| set | n | LeNet wrong | L2 | L-inf | logit margin | Eq. 3 holds |", "|---|---|---|---|---|---|---|"]
    sets = results["finetune_sets"]
    named = [("Small Adv. (all eps)", sets["small_adv"])] + [(f"Large Adv. eps {k}", v) for k, v in sets["large_adv"].items()]
    for name, st in named:
        q = {k: f"{st[k]['median']:.2f} [{st[k]['q25']:.2f}, {st[k]['q75']:.2f}]" for k in ("l2", "linf", "logit_margin")}
        lines.append(f"| {name} | {st['n']} | {_pct(st['misclassified'])} | {q['l2']} | {q['linf']} | {q['logit_margin']} "
                     f"| {_pct(st['eq3_holds'])} |")
    return lines


def render_report(results: dict[str, Any], paper: dict[str, Any]) -> str:
    """Markdown: our Tables II-IV beside the paper's, with differences in percentage points."""
    lines = [f"# {results['experiment']} ({results['profile']} profile)", "",
             f"git {results['git_revision']}, seed {results['seed']}, total wall time "
             f"{results['wall_time_s']['total']:.0f} s. Accuracies on adversarial sets count the ORIGINAL label.", "",
             f"Command: `latentdefence reproduce {results['experiment']}-table2 --profile {results['profile']}` "
             "(every LAD table and figure of this dataset comes from this one run).", "",
             "## Generator (Fig. 3)", "", "| | ours | paper |", "|---|---|---|"]
    for key in ("train_mse", "test_mse"):
        lines.append(f"| {key} | {results['generator'][key]:.5f} | {paper.get('generator', {}).get(key, '—')} |")
    for table, model in (("table2", results["models"]["table2_finetuned"]),
                         ("table3", results["models"]["table3_finetuned"])):
        lines += ["", f"## {table.replace('table', 'Table ')} (fine-tuned = {model})", "",
                  "| attack | n | original (ours) | original (paper) | diff | fine-tuned (ours) | fine-tuned (paper) | diff |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, row in results[table].items():
            ref = paper.get(table, {}).get(name, (None, None))
            lines.append(f"| {name} | {row['n']} | {_pct(row['original'])} | {_pct(ref[0])} | {_diff(row['original'], ref[0])} "
                         f"| {_pct(row['finetuned'])} | {_pct(ref[1])} | {_diff(row['finetuned'], ref[1])} |")
    lines += _two_readings(results) + _controls_section(results) + _sets_section(results)
    if "ga_search" in results:
        rates = ", ".join(f"{part} {_pct(v['success_rate'])} of {v['candidates']}" for part, v in results["ga_search"].items())
        lines += ["", "GA rows hold only the AC-GAN searches that fooled the model they were run against while the "
                  f"auxiliary classifier kept the source class (success: {rates}); so Table II's GA 'original' is 0 "
                  "by construction (the paper has no GA row there)."]
    t4 = results["table4"]
    lines += ["", f"## Table IV (clean accuracy on {t4['n']} held-out test images)", "",
              "| model | ours | paper | diff |", "|---|---|---|---|"]
    names = ["original", *[n for n in ATTACKS if n in t4], "ours", "adv_model"]
    for name in names:
        ref = paper.get("table4", {}).get(name)
        lines.append(f"| {name} | {_pct(t4[name])} | {_pct(ref)} | {_diff(t4[name], ref)} |")
    lines += ["", "## Fig. 5 (LAD success rate on the Large Adv. sets)", "", "| eps | success | targeted | Eq. 3 holds |",
              "|---|---|---|---|"]
    f5 = results["fig5"]
    for i, eps in enumerate(f5["eps"]):
        lines.append(f"| {eps:g} | {_pct(f5['success_rate'][i])} | {_pct(f5['targeted_success_rate'][i])} "
                     f"| {_pct(f5['consistency_rate'][i])} |")
    lines += ["", "## Wall time of this run (s)", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {sec:.1f} |" for stage, sec in results["wall_time_s"].items()]
    lines += ["", "## Build time of each cached stage (s; built by this run or reused from the stage cache)", "",
              "| cache stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {sec:.1f} |" for stage, sec in results.get("stage_build_time_s", {}).items()]
    return "\n".join(lines) + "\n"


__all__ = ["ATTACKS", "AttackSettings", "DatasetSpec", "LadConfig", "PAPER", "PROFILES", "SPECS", "lad_config",
           "render_report", "run_lad"]


def pipeline_config(profile: str, dataset: str, data_dir: str | None, checkpoint: str | None) -> LadConfig:
    """The LAD pipelines' config of a profile (they train their own classifiers: no checkpoint)."""
    if checkpoint:
        raise ValueError("--classifier applies to DLD experiments only")
    return lad_config(profile, dataset, data_dir=data_dir)


register_pipeline("lad", config=pipeline_config, run=run_lad)
