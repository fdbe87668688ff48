"""What closes DLD's detection gap, measured: one row per change of the encoders, at a reduced scale.

Every row keeps the classifier F, the calibration set, the clean evaluation images and the grey-box
FGSM / PGD sets fixed, changes one setting of the reference row (``--set`` syntax) and reports the
ROC AUC (paper definition, every adversarial as positive, per layer), robustness and the clean FP rate
at the threshold calibrated on the 750 calibration images, the pruned training points and wall times.
Results are rewritten after every row, so a long ablation can be read while it runs; encoders are
cached per settings, so a re-run resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .._io import atomic_path, environment_info, git_revision, write_json
from .._seed import seed_everything
from .cache import StageTimer, build_seconds
from .dld import (DLDExperimentConfig, _classifier, _data, _detector, _encoders, _grey_box, _row, dld_config)
from .overrides import apply_overrides

ATTACKS = ("fgsm", "pgd")


@dataclass(frozen=True)
class AblationRow:
    """One row: a name and the settings it changes on the reference (e.g. "encoder.pairing=legacy")."""

    name: str
    changes: tuple[str, ...] = ()


@dataclass(frozen=True)
class DLDAblationConfig:
    """The reference DLD settings (reduced scale) and the rows, each one change away from it."""

    profile: str = "cpu"
    reference: DLDExperimentConfig = field(default_factory=DLDExperimentConfig)
    rows: tuple[AblationRow, ...] = ()


def _pgd_steps(steps: int, eps: float = 0.3) -> tuple[str, ...]:
    """PGD-k encoder training with the classifier's step rule (2.5 * eps / k)."""
    return (f"encoder.steps={steps}", f"encoder.step_size={2.5 * eps / steps:.4f}")


# Cheapest and most telling rows first, so a run cut short still answers the main questions.
CPU_ROWS = (AblationRow("legacy pairing", ("encoder.pairing=legacy",)),
            AblationRow("reference (per-half pairing)"),
            AblationRow("deeper conv encoder", ("encoder.depth=2",)),
            AblationRow("latent dim 20", ("latent_dim=20",)),
            AblationRow("PGD-7 in encoder training", _pgd_steps(7)),
            AblationRow("4 epochs", ("encoder.epochs=4",)),
            AblationRow("2x training images", ("encoder.max_train=4000",)),
            AblationRow("PGD-10 in encoder training", _pgd_steps(10)),
            # training amount is what moved the AUC in the rows above: more of it, and the two combined
            AblationRow("8 epochs", ("encoder.epochs=8",)),
            AblationRow("4 epochs, 2x training images", ("encoder.epochs=4", "encoder.max_train=4000")))


def ablation_config(profile: str = "cpu") -> DLDAblationConfig:
    """`cpu`: ~40 min of one (shared) core for MNIST: encoders on 2k images x 2 epochs, a 10k-image index,
    3,000 clean evaluation images, FGSM on 2,000 of them and the cpu profile's own PGD set (500, from its
    cache); `smoke`: seconds, two rows."""
    if profile == "cpu":
        base = dld_config("cpu")
        reference = replace(base, profile="ablation-cpu", index_max_train=10_000, n_clean=3000,
                            encoder=replace(base.encoder, epochs=2, max_train=2000),
                            attacks=replace(base.attacks, n={**base.attacks.n, "fgsm": 2000}))
        return DLDAblationConfig("cpu", reference, CPU_ROWS)
    if profile == "smoke":
        return DLDAblationConfig("smoke", replace(dld_config("smoke"), profile="ablation-smoke"),
                                 (AblationRow("legacy pairing", ("encoder.pairing=legacy",)), AblationRow("reference")))
    raise ValueError(f"the DLD ablation has profiles smoke and cpu, got {profile!r}")


def run_dld_ablation(config: DLDAblationConfig, out_dir: str | Path, cache_root: Path | None = None) -> dict[str, Any]:
    """Every row against the same F, calibration set and attack sets; results.json and report.md in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ref, timer = config.reference, StageTimer()
    revision, generator = git_revision(), seed_everything(ref.seed)
    with timer.timed("data"):
        train, cal, clean = _data(ref)
    with timer.timed("classifier"):
        classifier, classifier_key = _classifier(ref, train, cache_root)
    with timer.timed("attacks"):
        adversarial = {a: _grey_box(ref, a, classifier, classifier_key, clean, cache_root, generator) for a in ATTACKS}
    results: dict[str, Any] = {"profile": config.profile, "rows": [], "settings": asdict(config), "seed": ref.seed,
                               "git_revision": revision, "environment": environment_info(),
                               "wall_time_s": timer.wall_time_s}
    for row in config.rows:
        cfg = apply_overrides(ref, row.changes)
        with timer.timed(row.name):
            results["rows"].append(_ablation_row(row, cfg, classifier, classifier_key, train, cal, clean,
                                                 adversarial, cache_root))
        write_json(out / "results.json", results)
        _write_report(out / "report.md", config, results)
    return results


def _ablation_row(row: AblationRow, cfg: DLDExperimentConfig, classifier: Any, classifier_key: str, train: Any,
                  cal: Any, clean: Any, adversarial: dict[str, dict[str, Any]], root: Path | None) -> dict[str, Any]:
    """Train (or reuse) this row's encoders, fit and calibrate the detector, score clean and attack sets."""
    timer = StageTimer()
    encoders, enc_dir = _encoders(cfg, classifier, classifier_key, train, root)
    with timer.timed("detector"):
        det = _detector(cfg, classifier, encoders, train, cal, enc_dir)
    with timer.timed("score"):
        _, clean_score, clean_per = det.nonconformity(clean.images)
        attacks = {name: _row(det, adv["labels"], det.nonconformity(adv["images"]), clean_score, clean_per)
                   for name, adv in adversarial.items()}
    return {"name": row.name, "changes": list(row.changes), "attacks": attacks, "threshold": det.threshold_,
            "fpr": float((clean_score > det.threshold_).float().mean()), "pruned": det.pruned_,
            "encoder_build_s": build_seconds(enc_dir), **{f"{k}_s": v for k, v in timer.wall_time_s.items()}}


def _write_report(path: Path, config: DLDAblationConfig, results: dict[str, Any]) -> None:
    """One table row per ablation row: AUC per attack (paper def. / all adversarial / per layer), robustness."""
    ref = config.reference
    enc = ref.encoder
    lines = [f"# DLD ablation on {ref.dataset.upper()} ({config.profile} profile)", "",
             f"Reference row: encoders on {enc.max_train} images x {enc.epochs} epochs, PGD-{enc.steps} (step "
             f"{enc.step_size:g}, eps {enc.eps:g}, ramp {enc.eps_ramp:g}), depth {enc.depth}, width {enc.width}, "
             f"latent dim {ref.latent_dim}, pairing {enc.pairing}; k-NN index on {ref.index_max_train} training "
             f"images; threshold for FP <= {100 * ref.target_fpr:g}% from {ref.n_calibration} calibration images; "
             f"{ref.n_clean} clean evaluation images; FGSM on {ref.attacks.n['fgsm']}, PGD-{ref.attacks.pgd_steps} "
             f"({ref.attacks.pgd_restarts} restarts) on {ref.attacks.n['pgd']}. Same classifier in every row. "
             f"git {results['git_revision']}.", "",
             "AUC cells: paper definition (misclassified adversarial vs clean) / every adversarial vs clean / per "
             "layer (paper definition on each encoder's non-conformity).", "",
             "| row | change | FGSM AUC | PGD AUC | FGSM rob. | PGD rob. | FP | pruned (per layer) | encoders s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        aucs = [f"{a['roc_auc']:.3f} / {a['roc_auc_all_adversarial']:.3f} / "
                + " ".join(f"{v:.2f}" for v in a["roc_auc_per_layer"].values()) for a in r["attacks"].values()]
        robs = [f"{100 * a['robustness']:.1f}" for a in r["attacks"].values()]
        pruned = " / ".join(str(v) for v in r["pruned"].values())
        lines.append(f"| {r['name']} | {', '.join(r['changes']) or '-'} | {' | '.join(aucs)} | {' | '.join(robs)} | "
                     f"{100 * r['fpr']:.2f} | {pruned} | {r['encoder_build_s']} |")
    if results["rows"]:
        bases = {a: v["base_accuracy"] for a, v in results["rows"][0]["attacks"].items()}
        lines += ["", "Base accuracy of F on the attack sets (the same in every row): "
                  + ", ".join(f"{a} {100 * v:.1f}%" for a, v in bases.items()) + "."]
    lines += ["", "Wall time (s): " + ", ".join(f"{k} {v}" for k, v in results["wall_time_s"].items()), ""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))
