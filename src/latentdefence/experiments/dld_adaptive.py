"""DLD and baseline detectors attacked by attackers who know them (issue 11), on one classifier and one image set.

For each detector (DLD; Deep k-NN, Mahalanobis and LID from `latentdefence.detectors`): clean false positives,
then robustness (DLD's definition), undetected success at the calibrated threshold and at FPR 1% / 5%
(thresholds from the calibration images only), ROC AUC per layer, under: PGD on F (the paper's grey-box
attack), the paper's adaptive attack (DLD only), guide-point soft-kNN (k-NN detectors), selective and
orthogonal PGD on the detector's surrogate, and the per-image worst case over all of them. F alone under an
AutoAttack-style cascade (APGD-CE, APGD-T, Square). Gradient-masking checks on DLD: double steps and restarts,
success against eps, and transfer from an undefended model.

The DLD detector comes from `experiments.dld`'s cached stages (its cpu profile, the committed classifier) or
from a saved artifact (`detector_artifact`); which one is recorded in results.json.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_path, environment_info, git_revision, sha256_file, write_json
from .._seed import seed_everything
from ..attacks import PGD, AutoAttack, GuidePointAttack, OrthogonalPGD, SelectivePGD
from ..attacks.base import Attack
from ..attacks.detector_aware import DetectorAttack
from ..data.base import ImageDataset
from ..dld import CentroidAttack, DeepLatentDefence, ensemble_pgd, load_encoders
from ..dld.encoders import EncoderDecoder
from ..evaluation.detection import Verdicts, detection_metrics, verdicts, worst_case
from ..models import TappedModel
from .cache import StageTimer, ensure_stage
from .dld import DLDExperimentConfig, _batched, _classifier, _data, _detector, _encoders, dld_config

COMMITTED_CLASSIFIER = "docs/results/dld-mnist-table1/classifier"
BASELINES = ("dknn", "mahalanobis", "lid")


@dataclass(frozen=True)
class AdaptiveSettings:
    """Attack budgets. Defaults are the paper profile's (GPU); `cpu` and `smoke` shrink them (recorded)."""

    eps: float = 0.3
    n: int | None = 1000                   # evaluation images attacked (None: all)
    pgd_steps: int = 100                    # the paper's grey-box PGD on F
    pgd_restarts: int = 5
    pgd_step_size: float = 0.01
    adaptive_steps: int = 100               # the paper's adaptive attack (DLD only)
    centroid_steps: int = 100
    alpha1: float = 0.01
    alpha2: tuple[float, ...] = (5.0, 15.0)
    steps: int = 100                        # detector-aware attacks
    restarts: int = 2
    n_targets: int = 9                      # guide-point attack's target classes
    check_every: int = 5
    refresh_every: int = 10
    autoattack_steps: int = 100
    autoattack_targets: int = 9
    square_queries: int = 5000
    n_masking: int = 200                    # images for the gradient-masking checks
    eps_sweep: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)
    undefended_epochs: int = 1              # transfer source: a clean-trained copy of F's architecture
    undefended_max_train: int = 20_000
    batch_size: int = 250


@dataclass(frozen=True)
class DLDAdaptiveConfig:
    """Everything one adaptive-evaluation run depends on."""

    profile: str = "paper"
    dld: DLDExperimentConfig = field(default_factory=lambda: replace(dld_config("cpu"),
                                                                    classifier_checkpoint=COMMITTED_CLASSIFIER))
    detector_artifact: str | None = None    # a saved DeepLatentDefence; None: build it from dld's stages
    baselines: tuple[str, ...] = BASELINES
    baseline_max_train: int | None = None   # training images the baselines are given (None: all)
    dknn_max_train: int | None = 10_000     # of which Deep k-NN indexes a seeded subset (its cost grows with it)
    lr_samples: int = 2000                  # training images for Mahalanobis' and LID's logistic regression
    attacks: AdaptiveSettings = AdaptiveSettings()
    fprs: tuple[float, ...] = (0.01, 0.05)
    seed: int = 0


def adaptive_config(profile: str = "cpu") -> DLDAdaptiveConfig:
    """The named profile: paper (GPU budgets, DLD's paper profile), cpu (DLD's cpu profile on the committed
    classifier; ~30-40 min on one core, n = 500), smoke (seconds; numbers meaningless)."""
    base = DLDAdaptiveConfig()
    if profile == "paper":
        return replace(base, dld=dld_config("paper"))   # DLD and its classifier at the paper's settings (a GPU job)
    if profile == "cpu":
        return replace(base, profile="cpu", dknn_max_train=3000, attacks=replace(
            base.attacks, n=500, pgd_steps=40, pgd_restarts=1, adaptive_steps=50, centroid_steps=50, steps=40,
            restarts=1, n_targets=2, autoattack_steps=50, autoattack_targets=3, square_queries=500, n_masking=100,
            eps_sweep=(0.1, 0.2, 0.3, 0.4, 0.5)))
    if profile == "smoke":
        dld = replace(dld_config("smoke"), classifier_checkpoint=COMMITTED_CLASSIFIER)
        return replace(base, profile="smoke", dld=dld, baseline_max_train=1000, dknn_max_train=300, lr_samples=500,
                       attacks=replace(
            base.attacks, n=12, pgd_steps=3, pgd_restarts=1, adaptive_steps=2, centroid_steps=2, alpha2=(15.0,),
            steps=3, restarts=1, n_targets=1, check_every=1, refresh_every=2, autoattack_steps=3,
            autoattack_targets=1, square_queries=5, n_masking=8, eps_sweep=(0.1, 0.3), undefended_max_train=300,
            batch_size=12))
    raise ValueError(f"unknown profile {profile!r}; choose smoke, cpu or paper")


# -- the run ------------------------------------------------------------------------------------
def run_dld_adaptive(config: DLDAdaptiveConfig, out_dir: str | Path, cache_root: Path | None = None) -> dict[str, Any]:
    """Every detector under every attack; writes results.json, report.md and figures to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timer, generator = StageTimer(), seed_everything(config.seed)
    revision, cpu_start = git_revision(), time.process_time()
    a = config.attacks
    with timer.timed("data"):
        train, cal, clean = _data(config.dld)
        data = clean.head(a.n)
    with timer.timed("dld"):
        dld, encoders, source = _dld(config, train, cal, cache_root)
    classifier = dld.classifier.eval()
    with timer.timed("baselines"):
        detectors: dict[str, Any] = {"dld": dld, **_baselines(config, classifier, train, cal)}
    sets: dict[str, torch.Tensor] = {}
    with timer.timed("attack_pgd"):
        pgd = PGD(eps=a.eps, step_size=a.pgd_step_size, steps=a.pgd_steps, restarts=a.pgd_restarts, generator=generator)
        sets["pgd"] = _on_classifier(pgd, classifier, data, a.batch_size)
    with timer.timed("attack_autoattack"):
        aa = AutoAttack(a.eps, a.autoattack_steps, n_target_classes=a.autoattack_targets,
                        square_queries=a.square_queries, generator=generator)
        sets["autoattack"], robust_after = _autoattack(aa, classifier, data, a.batch_size)
    per_detector: dict[str, dict[str, torch.Tensor]] = {}
    for name, det in detectors.items():
        per_detector[name] = dict(sets)
        if name == "dld" and encoders is not None:
            with timer.timed("attack_adaptive_paper"):
                per_detector[name]["adaptive_paper"] = _paper_adaptive(config, dld, encoders, data, generator)
        for attack_name, attack in _detector_attacks(config, det, generator).items():
            starts = sets["autoattack"] if attack_name == "selective" else None   # F already fooled: hide it
            with timer.timed(f"attack_{attack_name}_{name}"):
                per_detector[name][attack_name] = _on_detector(attack, det, data, a.batch_size, starts)
    with timer.timed("evaluate"):
        results = _evaluate(config, detectors, cal, clean, data, per_detector)
        results["classifier_alone"] = {"autoattack_robust_accuracy_after": robust_after, "n": len(data)}
    with timer.timed("masking_checks"):
        results["masking"] = _masking(config, dld, encoders, train, data, per_detector["dld"], results, cache_root,
                                      generator)
    with timer.timed("figures"):
        _figures(out, results)
    results.update(settings=asdict(config), seed=config.seed, git_revision=revision, detector_source=source,
                   environment=environment_info(), wall_time_s=timer.wall_time_s,
                   cpu_time_s=round(time.process_time() - cpu_start, 1),
                   dataset_sizes={"train": len(train), "calibration": len(cal), "clean_eval": len(clean),
                                  "attacked": len(data)})
    write_json(out / "results.json", results)
    _write_report(out / "report.md", config, results)
    return results


def _dld(config: DLDAdaptiveConfig, train: ImageDataset, cal: ImageDataset,
         root: Path | None) -> tuple[DeepLatentDefence, dict[str, EncoderDecoder] | None, dict[str, Any]]:
    """DLD from the artifact (re-calibrated on our calibration split) or from dld's cached stages, with the
    encoder-decoders when available (the paper's adaptive attack needs the decoders) and a record of the source."""
    if config.detector_artifact:
        path = Path(config.detector_artifact)
        det = DeepLatentDefence.load(path)
        saved = {"threshold": getattr(det, "threshold_", None), "target_fpr": getattr(det, "target_fpr_", None)}
        det.calibrate(cal, target_fpr=config.dld.target_fpr)
        beside = path.parent / "encoders.safetensors"
        encoders = load_encoders(str(beside)) if beside.is_file() else None
        return det, encoders, {"kind": "artifact", "path": str(path), "sha256": sha256_file(path),
                               "artifact_calibration": saved, "recalibrated_threshold": det.threshold_,
                               "encoder_decoders": str(beside) if encoders is not None else None,
                               "params": det._params(), "pruned": det.pruned_}
    classifier, key = _classifier(config.dld, train, root)
    encoders, enc_dir = _encoders(config.dld, classifier, key, train, root)
    det = _detector(config.dld, classifier, encoders, train, cal, enc_dir)
    return det, encoders, {"kind": "stages", "encoders_dir": str(enc_dir), "classifier_key": key,
                           "classifier_checkpoint": config.dld.classifier_checkpoint, "params": det._params(),
                           "pruned": det.pruned_}


def _baselines(config: DLDAdaptiveConfig, classifier: TappedModel, train: ImageDataset,
               cal: ImageDataset) -> dict[str, Any]:
    """Deep k-NN, Mahalanobis and LID on the same F, fitted on the same training images, same calibration."""
    if not config.baselines:
        return {}
    from .. import detectors as baseline

    make: dict[str, Callable[[], Any]] = {"dknn": lambda: baseline.DeepKNN(classifier, max_train=config.dknn_max_train),
                                          "mahalanobis": lambda: baseline.MahalanobisDetector(
                                              classifier, lr_samples=config.lr_samples),
                                          "lid": lambda: baseline.LIDDetector(classifier, lr_samples=config.lr_samples)}
    unknown = set(config.baselines) - set(make)
    if unknown:
        raise ValueError(f"unknown baseline detectors {sorted(unknown)}; choose from {sorted(make)}")
    fit_on = train.head(config.baseline_max_train)
    return {name: make[name]().fit(fit_on).calibrate(cal, target_fpr=config.dld.target_fpr)
            for name in config.baselines}


def _detector_attacks(config: DLDAdaptiveConfig, det: Any, generator: torch.Generator) -> dict[str, DetectorAttack]:
    """The new attacks that fit this detector (guide points need a k-NN index)."""
    a = config.attacks
    common = {"steps": a.steps, "restarts": a.restarts, "check_every": a.check_every, "generator": generator}
    out: dict[str, DetectorAttack] = {}
    if hasattr(det, "indexes_") and hasattr(det, "latents"):
        out["guide_points"] = GuidePointAttack(a.eps, n_targets=a.n_targets, refresh_every=a.refresh_every, **common)
    out["selective"] = SelectivePGD(a.eps, **common)
    out["orthogonal"] = OrthogonalPGD(a.eps, **common)
    return out


def _on_classifier(attack: Attack, classifier: TappedModel, data: ImageDataset, batch_size: int) -> torch.Tensor:
    return _batched(lambda x, y: attack(classifier, x, y).images, data, batch_size, type(attack).__name__)


def _on_detector(attack: DetectorAttack, det: Any, data: ImageDataset, batch_size: int,
                 starts: torch.Tensor | None = None) -> torch.Tensor:
    """The attack in batches, its first run from `starts` (N, C, H, W) when given."""
    return torch.cat([attack(det, data.images[i:i + batch_size], data.labels[i:i + batch_size],
                             starts=None if starts is None else starts[i:i + batch_size]).images
                      for i in range(0, len(data), batch_size)])


def _autoattack(attack: AutoAttack, classifier: TappedModel, data: ImageDataset,
                batch_size: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The cascade in batches; robust accuracy after each stage over all images."""
    images, robust = [], {}
    for i in range(0, len(data), batch_size):
        result, after = attack.evaluate(classifier, data.images[i:i + batch_size], data.labels[i:i + batch_size])
        images.append(result.images)
        for stage, value in after.items():
            robust[stage] = robust.get(stage, 0.0) + value * len(result.images)
    return torch.cat(images), {k: v / len(data) for k, v in robust.items()}


def _paper_adaptive(config: DLDAdaptiveConfig, det: DeepLatentDefence, encoders: dict[str, EncoderDecoder],
                    data: ImageDataset, generator: torch.Generator) -> torch.Tensor:
    """Section V-B as `experiments.dld` runs it: ensemble PGD, then Eq. 10 for each alpha2, and the alpha2 with
    the lowest robustness (Table I's adaptive row; ties go to the smaller alpha2)."""
    a = config.attacks
    first = _batched(lambda x, y: ensemble_pgd(det.classifier, encoders, x, y, eps=a.eps, step_size=a.pgd_step_size,
                                               steps=a.adaptive_steps, generator=generator).images,
                     data, a.batch_size, "adaptive (i)")
    enc, centroids = {t: ed.encoder for t, ed in encoders.items()}, det.centroids()
    best, best_robust = first, float("inf")
    for alpha2 in a.alpha2:
        attack = CentroidAttack(eps=a.eps, alpha1=a.alpha1, alpha2=alpha2, steps=a.centroid_steps,
                                step_size=a.pgd_step_size)
        adv = torch.cat([attack(det.classifier, enc, centroids, data.images[i:i + a.batch_size],
                                first[i:i + a.batch_size], data.labels[i:i + a.batch_size]).images
                         for i in range(0, len(data), a.batch_size)])
        v = verdicts(det, adv)
        robust = float((~((v.predicted != data.labels) & ~v.flagged)).float().mean())
        if robust < best_robust:
            best, best_robust = adv, robust
    return best


# -- evaluation ---------------------------------------------------------------------------------
def _evaluate(config: DLDAdaptiveConfig, detectors: dict[str, Any], cal: ImageDataset, clean: ImageDataset,
              data: ImageDataset, per_detector: dict[str, dict[str, torch.Tensor]]) -> dict[str, Any]:
    """Per detector: clean FP, each attack's metrics, the worst case over the paper's and over all attacks."""
    out: dict[str, Any] = {"detectors": {}}
    for name, det in detectors.items():
        v_cal, v_clean = verdicts(det, cal.images), verdicts(det, clean.images)
        sets = {k: verdicts(det, imgs) for k, imgs in per_detector[name].items()}
        paper = [k for k in ("pgd", "adaptive_paper") if k in sets]
        out["detectors"][name] = {
            "threshold": float(det.threshold_),
            "clean": {"n": len(clean), "fpr": float(v_clean.flagged.float().mean()),
                      "accuracy": float((v_clean.predicted == clean.labels).float().mean()),
                      "calibration_fpr": float(v_cal.flagged.float().mean())},
            "attacks": {k: detection_metrics(data.labels, v, v_clean, v_cal, config.fprs, config.dld.target_fpr)
                        for k, v in sets.items()},
            "paper_attacks": worst_case(data.labels, {k: sets[k] for k in paper}, v_cal, config.fprs),
            "all_attacks": worst_case(data.labels, sets, v_cal, config.fprs)}
    return out


def _masking(config: DLDAdaptiveConfig, det: DeepLatentDefence, encoders: dict[str, EncoderDecoder] | None,
             train: ImageDataset, data: ImageDataset, sets: dict[str, torch.Tensor], results: dict[str, Any],
             root: Path | None, generator: torch.Generator) -> dict[str, Any]:
    """Carlini et al.'s checks on DLD's strongest new attack, on the first `n_masking` images."""
    a = config.attacks
    sub = data.head(a.n_masking)
    attacks = results["detectors"]["dld"]["attacks"]
    strongest = min((k for k in ("guide_points", "selective", "orthogonal") if k in attacks),
                    key=lambda k: (attacks[k]["robustness"], k))
    base = _detector_attacks(config, det, generator)[strongest]
    doubled = type(base)(**{**base.params, "steps": 2 * a.steps, "restarts": 2 * a.restarts, "generator": generator})

    def robustness(images: torch.Tensor) -> float:
        v = verdicts(det, images)
        return float((~((v.predicted != sub.labels) & ~v.flagged)).float().mean())

    starts = sets["autoattack"][:len(sub)] if strongest == "selective" else None   # as in the main run
    more = {"attack": strongest, "budget": robustness(sets[strongest][:len(sub)]),
            "double_steps_and_restarts": robustness(_on_detector(doubled, det, sub, a.batch_size, starts))}
    sweep: dict[str, Any] = {"eps": list(a.eps_sweep), "attack": f"{strongest} (random start)", "dld": [],
                             "classifier_alone": []}
    for eps in a.eps_sweep:
        attack = type(base)(**{**base.params, "eps": eps, "step_size": 2.5 * eps / a.steps, "generator": generator})
        sweep["dld"].append(robustness(_on_detector(attack, det, sub, a.batch_size)))
        pgd = PGD(eps=eps, step_size=2.5 * eps / a.steps, steps=a.steps, generator=generator)
        adv = _on_classifier(pgd, det.classifier, sub, a.batch_size)
        with torch.no_grad():
            sweep["classifier_alone"].append(float((det.classifier(adv).argmax(1) == sub.labels).float().mean()))
    source = _undefended(config, train, root)
    pgd = PGD(eps=a.eps, step_size=a.pgd_step_size, steps=a.pgd_steps, restarts=a.pgd_restarts, generator=generator)
    adv = _on_classifier(pgd, source, sub, a.batch_size)
    with torch.no_grad():
        own = float((source(adv).argmax(1) == sub.labels).float().mean())
    transfer = {"source": f"{config.dld.classifier.arch} trained clean ({a.undefended_epochs} epoch(s) on "
                          f"{a.undefended_max_train} images)", "source_pgd_robust_accuracy": own,
                "dld_robustness_transfer": robustness(adv), "dld_robustness_white_box": more["budget"]}
    return {"n": len(sub), "more_iterations": more, "eps_sweep": sweep, "transfer": transfer}


def _undefended(config: DLDAdaptiveConfig, train: ImageDataset, root: Path | None) -> TappedModel:
    """A clean-trained copy of F's architecture (the transfer source), trained once and cached."""
    from ..models import create_model
    from ..training import TrainConfig, load_checkpoint, train_classifier

    a = config.attacks
    settings = {"arch": config.dld.classifier.arch, "epochs": a.undefended_epochs, "max_train": a.undefended_max_train,
                "seed": config.seed}
    tc = TrainConfig(epochs=a.undefended_epochs, adversarial="none", eval_samples=0, seed=config.seed)
    path = ensure_stage("dld-adaptive-undefended", settings, lambda d: train_classifier(
        create_model(config.dld.classifier.arch), train.head(a.undefended_max_train), tc, checkpoint_dir=d), root)
    return load_checkpoint(path / "final")[0].eval()


# -- figures and report -------------------------------------------------------------------------
def _figures(out: Path, results: dict[str, Any]) -> None:
    """Robustness against eps (masking check), and each detector's ROC under each attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .dld import _save

    sweep = results["masking"]["eps_sweep"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(sweep["eps"], [100 * r for r in sweep["dld"]], "o-", label=f"F + DLD, {sweep['attack']}")
    ax.plot(sweep["eps"], [100 * r for r in sweep["classifier_alone"]], "s--", label="F alone, PGD")
    ax.set(xlabel="eps (L-inf)", ylabel="robustness (%)", title="Robustness against eps (should reach ~0)")
    ax.legend()
    _save(fig, out / "robustness_vs_eps.png")
    dets = results["detectors"]
    fig, axes = plt.subplots(1, len(dets), figsize=(4.5 * len(dets), 4.2), squeeze=False)
    for ax, (name, res) in zip(axes[0], dets.items()):
        for attack, row in res["attacks"].items():
            if row["roc"]["fpr"]:
                ax.plot(row["roc"]["fpr"], row["roc"]["tpr"], label=f"{attack} ({row['roc_auc']:.3f})")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(xlabel="FPR (clean)", ylabel="TPR (misclassified adv.)", title=f"{name} ROC")
        if len(ax.lines) > 1:
            ax.legend(fontsize=7, loc="lower right")
    _save(fig, out / "roc.png")


def _write_report(path: Path, config: DLDAdaptiveConfig, results: dict[str, Any]) -> None:
    """One table per detector, the classifier-alone cascade, and the masking checks."""
    a = config.attacks
    src = results["detector_source"]
    lines = [f"# DLD and baseline detectors under adaptive attacks ({config.profile} profile)", "",
             f"eps {a.eps} (L-inf), {results['dataset_sizes']['attacked']} evaluation images, the same classifier for "
             f"every detector; thresholds calibrated on {config.dld.n_calibration} held-out clean test images "
             f"(target FPR {100 * config.dld.target_fpr:g}%; SR@FPR thresholds from those images only). "
             f"DLD source: {src['kind']} {src.get('path') or src.get('encoders_dir')}. git {results['git_revision']}.",
             "", "Robustness = classified correctly, or misclassified and flagged (DLD's definition). "
             "SR = undetected success rate (misclassified and not flagged).", ""]
    if "adaptive_paper" not in results["detectors"]["dld"]["attacks"]:
        lines += ["**The paper's adaptive attack was not run**: no encoder-decoders (`encoders.safetensors`) beside the "
                  "artifact, and it needs the decoders; DLD's 'paper's attacks' row is PGD alone.", ""]
    for name, res in results["detectors"].items():
        lines += [f"## {name}", "", f"Clean FP {100 * res['clean']['fpr']:.2f}% (n {res['clean']['n']}), "
                  f"threshold {res['threshold']:g}.", "",
                  "| attack | robustness [95% CI] | SR | SR@1% FPR | SR@5% FPR | ROC AUC | AUC per layer |",
                  "|---|---|---|---|---|---|---|"]
        for attack, row in res["attacks"].items():
            lo, hi = row["robustness_ci"]
            layers = ", ".join(f"{k} {v['roc_auc']:.3f}" for k, v in row["per_layer"].items())
            lines.append(f"| {attack} | {100 * row['robustness']:.2f} [{100 * lo:.1f}, {100 * hi:.1f}] | "
                         f"{100 * row['undetected_success_rate']:.2f} | {100 * row['sr_at_fpr']['0.01']['sr']:.2f} | "
                         f"{100 * row['sr_at_fpr']['0.05']['sr']:.2f} | {row['roc_auc']:.3f} | {layers} |")
        for key, label in (("paper_attacks", "worst case, paper's attacks"), ("all_attacks", "worst case, all attacks")):
            w = res[key]
            lines.append(f"| **{label}** | **{100 * w['robustness']:.2f}** | {100 * w['undetected_success_rate']:.2f} | "
                         f"{100 * w['sr_at_fpr']['0.01']:.2f} | {100 * w['sr_at_fpr']['0.05']:.2f} | | |")
        lines.append("")
    aa = results["classifier_alone"]["autoattack_robust_accuracy_after"]
    lines += ["## F alone, AutoAttack-style cascade", "", "| after | robust accuracy |", "|---|---|"]
    lines += [f"| {k} | {100 * v:.2f} |" for k, v in aa.items()]
    m = results["masking"]
    more, sweep, tr = m["more_iterations"], m["eps_sweep"], m["transfer"]
    lines += ["", f"## Gradient-masking checks (DLD, first {m['n']} images)", "",
              f"* {more['attack']}: robustness {100 * more['budget']:.2f}% at the profile's budget, "
              f"{100 * more['double_steps_and_restarts']:.2f}% with twice the steps and restarts.",
              "* robustness against eps (`robustness_vs_eps.png`): " + ", ".join(
                  f"{e:g}: {100 * r:.1f}%" for e, r in zip(sweep["eps"], sweep["dld"])) + " (F alone under PGD: "
              + ", ".join(f"{100 * r:.1f}%" for r in sweep["classifier_alone"]) + ").",
              f"* transfer from {tr['source']} (its own PGD robust accuracy {100 * tr['source_pgd_robust_accuracy']:.1f}%): "
              f"DLD robustness {100 * tr['dld_robustness_transfer']:.2f}% vs {100 * tr['dld_robustness_white_box']:.2f}% "
              "white-box.", "",
              "Settings: " + ", ".join(f"{k} {v}" for k, v in asdict(a).items()), "",
              "Wall time (s): " + ", ".join(f"{k} {v}" for k, v in results["wall_time_s"].items())
              + f"; total {sum(results['wall_time_s'].values()):.0f} s wall, {results['cpu_time_s']:.0f} s CPU.", ""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))

