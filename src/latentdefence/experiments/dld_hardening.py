"""DLD against attackers who know it (issue 24): the committed cpu-profile detector against the same detector with
its encoders hardened on detector-aware attacks (`dld.hardening`), on the same F, images and calibration.

Two measurements: (1) `evaluate_detectors` at the profile's budgets (the adaptive suite, every attack that
applies, worst case per image, Wilson intervals), F alone under the AutoAttack-style cascade beside them; (2)
worst-case robustness against the clean false-positive rate: each detector recalibrated at each rate of
`fpr_sweep` on the calibration images, attacked again at that operating point by the `sweep_attacks` (a cheaper
subset, named in the figure) on the first `sweep_n` images, with Mahalanobis and LID on the same F.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any


from .._io import environment_info, git_revision, save_figure, sha256_file, write_json
from ..data import load_dataset
from ..data.base import ImageDataset
from ..dld import DeepLatentDefence, load_encoders, save_encoders
from ..dld.encoders import EncoderDecoder
from ..dld.hardening import HardeningConfig, HardeningRound, harden
from ..evaluation.detector_eval import evaluate_detectors
from ..evaluation.threat import ThreatModel
from ..stats import wilson_interval
from .._timing import StageTimer
from .cache import ensure_stage
from ..data import calibration_split
from .dld_adaptive import AdaptiveSettings, adaptive_config
from .registry import choose_profile, register_pipeline

COMMITTED_DETECTOR = "docs/results/dld-mnist-table1/detector.safetensors"


@dataclass(frozen=True)
class DLDHardeningConfig:
    """Everything one run depends on; the detector artifact's encoders (encoders.safetensors beside it) start it."""

    profile: str = "cpu"
    detector_artifact: str = COMMITTED_DETECTOR
    hardening: HardeningConfig = HardeningConfig()
    max_train: int | None = None            # training images used (index, hardening, baselines); None: all
    n_heldout: int = 2000                   # last of them: the hardening rounds' calibration, not indexed
    n_calibration: int = 750                # held-out clean test images: thresholds (as every DLD experiment)
    n_clean: int | None = None              # clean test images for false positives and ROC negatives (None: the rest)
    target_fpr: float = 0.02
    attacks: AdaptiveSettings = field(default_factory=lambda: adaptive_config("cpu").attacks)
    sanity: tuple[str, ...] = ("dld", "dld_hardened")   # the gradient-masking checks
    fpr_sweep: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10)
    sweep_n: int = 200
    sweep_attacks: tuple[str, ...] = ("selective", "guide_points")   # the two strongest on DLD in dld-mnist-adaptive
    sweep_baselines: tuple[str, ...] = ("mahalanobis", "lid")
    lr_samples: int = 2000
    seed: int = 0


def hardening_config(profile: str = "cpu") -> DLDHardeningConfig:
    """cpu: 3 rounds of 2000 images, the adaptive suite's cpu budgets on 500 images, the FPR sweep on 200 (about
    90 min on one core);
    smoke: seconds, numbers meaningless; paper: more rounds and images, the paper budgets (a GPU job)."""
    def smoke() -> DLDHardeningConfig:
        attacks = adaptive_config("smoke").attacks
        return DLDHardeningConfig(profile="smoke", hardening=HardeningConfig(rounds=1, images_per_round=40,
                                                                             attack_steps=2, pgd_steps=2, epochs=1),
                                  max_train=1000, n_heldout=100, n_clean=200, attacks=replace(attacks, n=10), sanity=(),
                                  fpr_sweep=(0.02, 0.1), sweep_n=6, sweep_baselines=("mahalanobis",),
                                  lr_samples=900)  # FGSM fools a robust F on few images: 200 left 1 to fit on
    return choose_profile(profile, {
        "smoke": smoke, "cpu": DLDHardeningConfig,
        "paper": lambda: DLDHardeningConfig(profile="paper", hardening=HardeningConfig(rounds=6, images_per_round=10_000,
                                                                                       attack_steps=40),
                                            attacks=adaptive_config("paper").attacks, sweep_n=1000,
                                            sweep_attacks=("selective", "guide_points", "adaptive_paper"))},
        "dld-hardening")


def run_dld_hardening(config: DLDHardeningConfig, out_dir: str | Path, cache_root: Path | None = None,
                      train: ImageDataset | None = None, test: ImageDataset | None = None) -> dict[str, Any]:
    """Harden (cached), evaluate both detectors, sweep the operating point; writes results.json, report.md, PNGs.
    `train` / `test`: other images than MNIST's (tests)."""
    timer, revision, cpu_start = StageTimer(), git_revision(), time.process_time()
    out = Path(out_dir)
    with timer.timed("data"):
        if train is None or test is None:
            splits = load_dataset("mnist")
            train, test = splits.train, splits.test
        train = train.head(config.max_train)
        cal, rest = calibration_split(test, config.n_calibration, config.seed)
        attacked, clean = rest.head(config.attacks.n), rest.head(config.n_clean)
    base = DeepLatentDefence.load(config.detector_artifact)
    base_encoders = load_encoders(str(Path(config.detector_artifact).parent / "encoders.safetensors"))
    with timer.timed("hardening"):
        hardened_encoders, rounds = _hardened(config, base, base_encoders, train, cache_root)
    with timer.timed("fit_hardened"):
        hardened = DeepLatentDefence(base.classifier, tuple(base.taps), k=base.k, latent_dim=base.latent_dim,
                                     training=base.training, encoders=hardened_encoders).fit(train)
        detectors = {"dld": base.calibrate(cal, config.target_fpr),
                     "dld_hardened": hardened.calibrate(cal, config.target_fpr)}
        hardened.save(out / "detector_hardened.safetensors", metadata={"hardening": asdict(config.hardening)})
    threat = ThreatModel("linf", config.attacks.eps)
    evaluation = evaluate_detectors(detectors, attacked.images, attacked.labels, threat, f"{config.profile} profile",
                                    budget=config.attacks.budget(), calibration=cal.images,
                                    clean=(clean.images, clean.labels),
                                    encoders={"dld": base_encoders, "dld_hardened": hardened_encoders},
                                    sanity=config.sanity, target_fpr=config.target_fpr,
                                    seed=config.seed)
    with timer.timed("fpr_sweep"):
        sweep = _fpr_sweep(config, detectors, {"dld": base_encoders, "dld_hardened": hardened_encoders}, train,
                           cal, rest, clean, threat)
    results = evaluation.results
    wall = {**timer.wall_time_s, **results.pop("wall_time_s")}
    extra = {"hardening_rounds": [r.as_dict() for r in rounds], "fpr_sweep": sweep, "settings": asdict(config),
             "detector_artifact": {"path": config.detector_artifact, "sha256": sha256_file(config.detector_artifact)},
             "pruned": {"dld": base.pruned_, "dld_hardened": hardened.pruned_}, "git_revision": revision,
             "environment": environment_info(), "wall_time_s": wall,
             "cpu_time_s": round(time.process_time() - cpu_start, 1)}
    _sweep_figure(out, sweep)
    notes = [f"Same F, images ({len(attacked)} attacked) and calibration ({len(cal)} held-out clean test images, "
             f"target FPR {100 * config.target_fpr:g}%) for both detectors. `dld`: {config.detector_artifact}; "
             f"`dld_hardened`: its encoders after {config.hardening.rounds} hardening rounds "
             f"(`HardeningConfig` in results.json). git {revision}.", _rounds_table(rounds), _sweep_table(sweep)]
    evaluation.write(out, title=f"DLD hardened against detector-aware attacks ({config.profile} profile)",
                     notes=notes, extra=extra)
    return {**results, **extra}


def _hardened(config: DLDHardeningConfig, base: DeepLatentDefence, encoders: dict[str, EncoderDecoder],
              train: ImageDataset, root: Path | None) -> tuple[dict[str, EncoderDecoder], list[HardeningRound]]:
    """The hardened encoders and their rounds, built once per (artifact, settings) and cached."""
    index, heldout = train.head(len(train) - config.n_heldout), train.subset(slice(len(train) - config.n_heldout, None))
    settings = {"artifact_sha256": sha256_file(config.detector_artifact), "hardening": asdict(config.hardening),
                "n_heldout": config.n_heldout, "n_train": len(train)}

    def build(d: Path) -> None:
        eds, rounds = harden(base.classifier, encoders, index, heldout, config.hardening, k=base.k, base=base.training)
        save_encoders(str(d / "encoders.safetensors"), eds)
        write_json(d / "rounds.json", [r.as_dict() for r in rounds])

    path = ensure_stage("dld-hardened-encoders", settings, build, root)
    rounds = [HardeningRound(**r) for r in json.loads((path / "rounds.json").read_text())]
    return load_encoders(str(path / "encoders.safetensors")), rounds


def _fpr_sweep(config: DLDHardeningConfig, detectors: dict[str, DeepLatentDefence],
               encoders: dict[str, dict[str, EncoderDecoder]], train: ImageDataset, cal: ImageDataset,
               rest: ImageDataset, clean: ImageDataset, threat: ThreatModel) -> dict[str, Any]:
    """Per target FPR: every detector recalibrated there and attacked again (the sweep attacks), worst case each."""
    from .. import detectors as baseline

    if not config.fpr_sweep:
        raise ValueError("fpr_sweep is empty: name at least one target false-positive rate")
    classifier = next(iter(detectors.values())).classifier
    others = {name: baseline.create_detector(name, classifier=classifier, lr_samples=config.lr_samples).fit(train)
              for name in config.sweep_baselines}
    data = rest.head(config.sweep_n)
    points: dict[str, list[dict[str, Any]]] = {}
    for fpr in config.fpr_sweep:
        at = {name: copy.copy(det).calibrate(cal, fpr) for name, det in {**detectors, **others}.items()}
        ev = evaluate_detectors(at, data.images, data.labels, threat, f"{config.profile} profile, FPR sweep",
                                budget=config.attacks.budget(), calibration=cal.images,
                                clean=(clean.images, clean.labels), encoders=encoders, sanity=(), target_fpr=fpr,
                                seed=config.seed, attacks=config.sweep_attacks)
        for name, res in ev.results["detectors"].items():
            w = res["all_attacks"]
            points.setdefault(name, []).append({"target_fpr": fpr, "clean_fpr": res["clean"]["fpr"],
                                                "robustness": w["robustness"], "robustness_ci": w["robustness_ci"],
                                                "strongest": w["strongest"], "n": w["n"]})
    # F alone: the same seeded cascade in every call, so the last one's result is every one's
    n, f_alone = len(data), min(ev.results["classifier_alone"]["autoattack_robust_accuracy_after"].values())
    return {"n": n, "attacks": ["pgd", "autoattack", *config.sweep_attacks], "detectors": points,
            "classifier_alone": {"robustness": f_alone, "robustness_ci": wilson_interval(round(f_alone * n), n)}}


def _rounds_table(rounds: list[HardeningRound]) -> str:
    """Markdown: what each hardening round's detector let through on the training images it was then trained on."""
    lines = ["## Hardening rounds (training images; the detector of that round)", "",
             "| round | images | threshold | held-out clean FP % | PGD on F evaded % | detector-aware attack evaded % "
             "| seconds |", "|---|---|---|---|---|---|---|"]
    for r in rounds:
        lines.append(f"| {r.round} | {r.images} | {r.threshold:g} | {100 * r.clean_fpr:.2f} | "
                     f"{100 * r.evaded_pgd:.2f} | {100 * r.evaded_attack:.2f} | {r.seconds:.0f} |")
    return "\n".join(lines)


def _sweep_table(sweep: dict[str, Any]) -> str:
    """Markdown: worst-case robustness [95% CI] per detector at each operating point."""
    fprs = [p["target_fpr"] for p in next(iter(sweep["detectors"].values()))]
    lines = [f"## Worst case against the clean FP rate ({sweep['n']} images; attacks: {', '.join(sweep['attacks'])}, "
             "each re-run at the operating point)", "",
             "| detector | " + " | ".join(f"FPR {100 * f:g}%" for f in fprs) + " |", "|---|" + "---|" * len(fprs)]
    for name, pts in sweep["detectors"].items():
        cells = [f"{100 * p['robustness']:.1f} [{100 * p['robustness_ci'][0]:.1f}, {100 * p['robustness_ci'][1]:.1f}]"
                 f" (FP {100 * p['clean_fpr']:.1f})" for p in pts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    f = sweep["classifier_alone"]
    lines.append(f"| F alone (cascade) | {100 * f['robustness']:.1f} [{100 * f['robustness_ci'][0]:.1f}, "
                 f"{100 * f['robustness_ci'][1]:.1f}] at every FPR |" + " |" * (len(fprs) - 1))
    return "\n".join(lines)


def _sweep_figure(out: Path, sweep: dict[str, Any]) -> None:
    """worst_case_vs_fpr.png: worst-case robustness (95% CI bars) against the measured clean FP rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, pts in sweep["detectors"].items():
        x = [100 * p["clean_fpr"] for p in pts]
        y = [100 * p["robustness"] for p in pts]
        err = [[100 * max(0.0, p["robustness"] - p["robustness_ci"][0]) for p in pts],   # float32 rates vs the CI
               [100 * max(0.0, p["robustness_ci"][1] - p["robustness"]) for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"F + {name}")
    f = sweep["classifier_alone"]
    ax.axhline(100 * f["robustness"], ls="--", color="grey", label="F alone (AutoAttack cascade)")
    ax.set(xscale="log", xlabel="clean false-positive rate (%)", ylabel="worst-case robustness (%)",
           title=f"Against attackers who know the detector (n {sweep['n']})")
    ax.legend(fontsize=7)
    save_figure(fig, out / "worst_case_vs_fpr.png", dpi=130)


def _pipeline_config(profile: str, dataset: str, data_dir: str | None, checkpoint: str | None) -> DLDHardeningConfig:
    """The hardening experiment's config (MNIST, the committed detector; a checkpoint does not apply)."""
    if dataset != "mnist" or data_dir or checkpoint:
        raise ValueError("dld-mnist-hardening runs on MNIST with the committed detector (its F); no data_dir or "
                         "classifier checkpoint")
    return hardening_config(profile)


register_pipeline("dld-hardening", config=_pipeline_config, run=run_dld_hardening)
