"""LAD experiments' settings: datasets (`SPECS`), attack settings, the typed `LadConfig`, the named profiles
(`lad_config`: smoke, cpu, paper) and the paper's own numbers (`PAPER`)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any


from ..lad.finetune import FinetuneConfig, finetune
from ..lad.ga import ACGANConfig
from ..lad.generator import GeneratorConfig
from ..training import TrainConfig
from .registry import choose_profile


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


def dataset_spec(dataset: str) -> DatasetSpec:
    if dataset not in SPECS:
        raise KeyError(f"unknown LAD dataset {dataset!r}; choose one of {sorted(SPECS)}")
    return SPECS[dataset]


def lad_config(profile: str, dataset: str = "mnist", **overrides: Any) -> LadConfig:
    """The named profile's settings for `dataset`, with keyword overrides (e.g. data_dir=...)."""
    dataset_spec(dataset)
    base = LadConfig(profile=profile, dataset=dataset, attacks=PAPER_ATTACKS[dataset])
    return replace(choose_profile(profile, {name: partial(make, base) for name, make in LAD_PROFILES.items()}, "lad"),
                   **overrides)


def _cpu(base: LadConfig) -> LadConfig:
    """Documented reductions, ~1 h on 2 cores for MNIST (docs/lad.md)."""
    base = replace(base, classifier=TrainConfig(epochs=3, batch_size=64), black=TrainConfig(epochs=2, batch_size=64,
                                                                                          seed=1),
                   generator=GeneratorConfig(epochs=8, batch_size=128), acgan=ACGANConfig(epochs=5, width=32),
                   svm_epochs=200, finetune=FinetuneConfig(epochs=3), finetune_seeds=(0, 1, 2),
                   control_seeds=(0, 1, 2), rerun_per_class=100,
                   attack=AttackSettings(pgd_steps=20, pgd_step_size=0.03, cw_steps=100, cw_search_steps=4,
                                         ga_steps=100, untargeted_per_class=200, targeted_per_class=10),
                   table4_per_class=200)
    if base.dataset != "mnist":
        base = replace(base, generator_width=0.25, train_limit=20_000,
                       loader_kwargs={"image_size": 64} if base.dataset == "celeba" else {})
    return base


def _smoke(base: LadConfig) -> LadConfig:
    """Tiny, seconds, for CI; numbers meaningless."""
    base = replace(base, classifier=TrainConfig(epochs=1, batch_size=32), black=TrainConfig(epochs=1, batch_size=32,
                                                                                          seed=1),
                   generator=GeneratorConfig(epochs=1, batch_size=32), generator_width=0.125, train_limit=512,
                   generator_train_limit=256,  # G reads splits.train: unbounded, all 73k SVHN images
                   acgan=ACGANConfig(epochs=1, batch_size=32, width=8, latent_dim=16),
                   boundary_per_class=3, svm_epochs=20, strategy="one_vs_rest", generation_per_class=1,
                   small_per_class=1,
                   large_eps=(0.1, 5.0, 20.0), small_eps=(0.1, 10.0), finetune=FinetuneConfig(epochs=1, batch_size=16),
                   attack=AttackSettings(pgd_steps=3, pgd_step_size=0.1, cw_steps=5, cw_search_steps=1,
                                         jsma_gamma=0.01, ga_steps=5, untargeted_per_class=2, targeted_per_class=1),
                   table4_per_class=2, long_epochs=2)
    if dataset_spec(base.dataset).scalable:  # at full width every fine-tune copies, trains and saves ~50M weights (minutes)
        base = replace(base, model_width=0.125, loader_kwargs={"image_size": 32} if base.dataset == "celeba" else {})
    return base


LAD_PROFILES: dict[str, Callable[[LadConfig], LadConfig]] = {"smoke": _smoke, "cpu": _cpu, "paper": lambda base: base}


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
