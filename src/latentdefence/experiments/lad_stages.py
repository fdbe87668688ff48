"""LAD's cached stages: F, the latent generator, the SVM boundaries, the generated and crafted sets, the fine-tuned
models, each built once per settings; `build_lad` is what every LAD measurement shares of them."""

from __future__ import annotations

import hashlib
from functools import partial
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import attacks as attack_lib
from ..attacks import AttackResult
from ..attacks.base import attack_in_batches as _attack_batches
from .._io import default_device, load_tensors
from .._progress import track
from .._seed import seed_everything
from ..data import Splits, load_dataset
from ..data.base import ImageDataset
from ..evaluation.metrics import accuracy
from ..stats import wilson_interval
from ..lad.attention_svm import TargetBoundaries, load_boundaries, save_boundaries
from ..lad.finetune import FinetuneConfig, LadSplit, finetune, make_split, per_class_sample
from ..lad.ga import ACGAN, UnrestrictedAttack, load_acgan, save_acgan, train_acgan
from ..lad.generation import GeneratedSet, every_other_target, generate_set
from ..lad.generator import (GeneratorConfig, LatentGenerator, create_generator, extract_latents, latent_head,
                             load_generator, reconstruction_mse, save_generator, train_generator)
from ..models import TappedModel, create_model
from ..training import TrainConfig, load_checkpoint, save_checkpoint, train_classifier
from .._timing import StageTimer
from .cache import build_seconds, default_cache_root, ensure_stage
from .lad_config import SPECS, TARGETED, AttackSettings, DatasetSpec, LadConfig, dataset_spec


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


def lad_attack(name: str, s: AttackSettings, seed: int, clip: bool = True) -> attack_lib.Attack:
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
    attack = lad_attack(name, config.attack, config.seed, clip)
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


def trained_acgan(stages: _Stages, settings: dict[str, Any], config: LadConfig, train: ImageDataset) -> ACGAN:
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


def as_dataset(adv: attack_lib.AdversarialSet, name: str) -> ImageDataset:
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
    spec = dataset_spec(config.dataset)
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


def accuracy_ci(rate: float | None, n: int) -> list[float] | None:
    """95% Wilson interval of an accuracy over n images."""
    return None if rate is None else list(wilson_interval(round(rate * n), n))

