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

from .._io import atomic_path, environment_info, git_revision, read_json, write_json
from ..dld.diagnostics import encoder_diagnostics
from .._seed import seed_everything
from .._timing import StageTimer
from .cache import build_seconds
from .dld import CleanReference, attack_row
from .dld_config import PAPER, DLDExperimentConfig, dld_config
from .dld_stages import dld_classifier, dld_data, dld_detector, dld_encoders, grey_box_set
from .overrides import apply_overrides
from .registry import choose_profile, register_pipeline

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


# The reference recipe first, then one change each (the second row is the cpu profile: this ablation chose it);
# the on-the-fly recipe the profile replaced is the costliest.
CPU_ROWS = (AblationRow("reference (precomputed PGD-10, batch 32, cosine lr, best on validation)"),
            AblationRow("precomputed PGD-10 and FGSM (the cpu profile)", ("encoder.precomputed=pgd,fgsm",)),
            AblationRow("clean images only (control)", ("encoder.adversarial=false",)),
            AblationRow("batch 128 (4x fewer steps)", ("encoder.batch_size=128", "encoder.eval_every=79")),
            AblationRow("constant lr", ("encoder.lr_schedule=constant",)),
            AblationRow("6 epochs", ("encoder.epochs=6",)),
            AblationRow("half the adversarial half on the fly (PGD-3 against F with A_N)",
                        ("encoder.online_fraction=0.5",)),
            AblationRow("earlier cpu recipe (on-the-fly PGD-3 against F with A_N, batch 128, eps ramp)",
                        ("encoder.online_fraction=1.0", "encoder.precomputed=", "encoder.batch_size=128",
                         "encoder.lr_schedule=constant", "encoder.eps_ramp=0.5", "encoder.validation=0")))


def ablation_config(profile: str = "cpu") -> DLDAblationConfig:
    """`cpu`: every row trains the cpu profile's encoders (20k images, its stopping rule) at the paper's three taps
    (as when the ablation was run; the six-tap comparison is `dld compare`'s) on PGD-10 examples alone,
    with one change (row 2 adds FGSM: the cpu profile); the
    k-NN index holds 20k training images; FGSM on all 9,250 evaluation images and PGD-40 on 2,000 of them, so
    each AUC's 95% interval is a few hundredths wide; `smoke`: seconds, two rows."""
    def cpu() -> DLDAblationConfig:
        base = dld_config("cpu")
        reference = replace(base, profile="ablation-cpu", index_max_train=20_000, taps=dld_config("paper").taps,
                            encoder=replace(base.encoder, precomputed=("pgd",), max_train=20_000),  # as measured
                            attacks=replace(base.attacks, pgd_steps=40, pgd_restarts=1,
                                            n={**base.attacks.n, "fgsm": None, "pgd": 2000}))
        return DLDAblationConfig("cpu", reference, CPU_ROWS)
    return choose_profile(profile, {
        "smoke": lambda: DLDAblationConfig("smoke", replace(dld_config("smoke"), profile="ablation-smoke"),
                                           (AblationRow("legacy pairing", ("encoder.pairing=legacy",)),
                                            AblationRow("reference"))),
        "cpu": cpu}, "dld-ablation")


def run_dld_ablation(config: DLDAblationConfig, out_dir: str | Path, cache_root: Path | None = None) -> dict[str, Any]:
    """Every row against the same F, calibration set and attack sets; results.json and report.md in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ref, timer = config.reference, StageTimer()
    revision, generator = git_revision(), seed_everything(ref.seed)
    with timer.timed("data"):
        train, cal, clean = dld_data(ref)
    with timer.timed("classifier"):
        classifier, classifier_key = dld_classifier(ref, train, cache_root)
    with timer.timed("attacks"):
        adversarial = {a: grey_box_set(ref, a, classifier, classifier_key, clean, cache_root, generator) for a in ATTACKS}
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
    encoders, enc_dir = dld_encoders(cfg, classifier, classifier_key, train, root)
    with timer.timed("detector"):
        det = dld_detector(cfg, classifier, encoders, train, cal, enc_dir)
    with timer.timed("diagnostics"):
        diagnostics = encoder_diagnostics(classifier, encoders, det, clean, adversarial)
    with timer.timed("score"):
        ref = CleanReference.of(det, clean, cal, PAPER[cfg.dataset]["fpr"] / 100)
        clean_score = ref.score
        attacks = {name: attack_row(det, adv["labels"], det.nonconformity(adv["images"]), ref, cfg.target_fpr)
                   for name, adv in adversarial.items()}
    return {"name": row.name, "changes": list(row.changes), "attacks": attacks, "threshold": det.threshold_,
            "fpr": float((clean_score > det.threshold_).float().mean()), "pruned": det.pruned_, "n_clean": len(clean),
            "encoder_build_s": build_seconds(enc_dir), "diagnostics": diagnostics,
            "pruned_fraction": {tap: v / min(len(train), cfg.index_max_train or len(train)) for tap, v in det.pruned_.items()},
            "training_log": read_json(enc_dir / "training_log.json") if (enc_dir / "training_log.json").is_file() else None, **{f"{k}_s": v for k, v in timer.wall_time_s.items()}}


TRAINED_PRUNED = 0.2       # a row whose encoders prune more of the index than this did not train
TRAINED_ACCURACY = 0.9     # ... nor one where F with some A_N inserted classifies fewer clean images than this


def trained(row: dict[str, Any]) -> bool:
    """Whether every encoder of an ablation row trained: little of its index pruned, F-with-A_N still accurate."""
    return (max(row["pruned_fraction"].values()) <= TRAINED_PRUNED
            and min(d["inserted_accuracy"]["clean"] for d in row["diagnostics"].values()) >= TRAINED_ACCURACY)


def _auc(a: dict[str, Any]) -> str:
    lo, hi = a["roc_auc_ci"]
    return f"{a['roc_auc']:.3f} [{lo:.3f}, {hi:.3f}]"


def _write_report(path: Path, config: DLDAblationConfig, results: dict[str, Any]) -> None:
    """One table row per ablation row: AUCs with intervals, TP rate at the paper's FP, robustness, and whether the
    encoders trained (F-with-A_N accuracy, pruned fraction)."""
    ref = config.reference
    enc = ref.encoder
    a = ref.attacks
    lines = [f"# DLD ablation on {ref.dataset.upper()} ({config.profile} profile)", "",
             f"Reference row: encoders on {enc.max_train} images x {enc.epochs} epochs, batch {enc.batch_size}, lr "
             f"{enc.lr:g} ({enc.lr_schedule}), adversarial half: precomputed {', '.join(enc.precomputed) or 'none'} "
             f"against F (PGD-{enc.precomputed_steps}), {100 * enc.online_fraction:g}% on the fly (PGD-{enc.steps} "
             f"against F with A_N); state kept: best on {enc.validation} held-out training images; depth "
             f"{enc.depth}, width {enc.width}, latent dim {ref.latent_dim}, pairing {enc.pairing}; k-NN index on "
             f"{ref.index_max_train} training images; threshold for FP <= {100 * ref.target_fpr:g}% from "
             f"{ref.n_calibration} calibration images; {results['rows'][0]['n_clean'] if results['rows'] else '?'} "
             f"clean evaluation images; FGSM on {a.n['fgsm'] or 'all'}, PGD-{a.pgd_steps} ({a.pgd_restarts} "
             f"restart) on {a.n['pgd']}. Same classifier, calibration and attack sets in every row. "
             f"git {results['git_revision']}.", "",
             "AUC: paper definition (misclassified adversarial vs clean) with its Hanley-McNeil 95% interval; "
             "'corr. neg.': correctly classified clean images as negatives; TP@FP: the ROC point at the paper's "
             "FP rate (1.96%); OR: one threshold per layer, joint calibrated FP. 'F+A_N clean / PGD': accuracy of F "
             "with each layer's encoder-decoder inserted (layers 1 / 2 / 3). A row marked 'no' did not train "
             f"(pruned > {100 * TRAINED_PRUNED:g}% or F+A_N clean < {100 * TRAINED_ACCURACY:g}%) and is not used.", "",
             "| row | FGSM AUC | FGSM corr. neg. | FGSM TP@FP | PGD AUC | PGD corr. neg. | PGD TP@FP | PGD OR AUC | "
             "FGSM / PGD rob. | FP | F+A_N clean | F+A_N PGD | pruned % | trained | encoders s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        f, p = r["attacks"]["fgsm"], r["attacks"]["pgd"]
        acc = lambda key: " / ".join(f"{100 * d['inserted_accuracy'][key]:.1f}" for d in r["diagnostics"].values())
        pruned = " / ".join(f"{100 * v:.1f}" for v in r["pruned_fraction"].values())
        lines.append(f"| {r['name']} | {_auc(f)} | {f['roc_auc_correct_negatives']:.3f} | "
                     f"{100 * f['tpr_at_paper_fpr']:.1f} | {_auc(p)} | {p['roc_auc_correct_negatives']:.3f} | "
                     f"{100 * p['tpr_at_paper_fpr']:.1f} | {p['or_rule']['roc_auc']:.3f} | "
                     f"{100 * f['robustness']:.1f} / {100 * p['robustness']:.1f} | {100 * r['fpr']:.2f} | {acc('clean')} | "
                     f"{acc('pgd')} | {pruned} | {'yes' if trained(r) else 'no'} | {r['encoder_build_s']} |")
    if results["rows"]:
        first = results["rows"][0]["attacks"]
        lines += ["", "Base accuracy of F on the attack sets (the same in every row): "
                  + ", ".join(f"{k} {100 * v['base_accuracy']:.1f}% ({v['n']} images, "
                              f"{round(v['n'] * (1 - v['base_accuracy']))} misclassified)" for k, v in first.items()) + "."]
    lines += ["", "Wall time (s): " + ", ".join(f"{k} {v}" for k, v in results["wall_time_s"].items()), ""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines))


def _pipeline_config(profile: str, dataset: str, data_dir: str | None, checkpoint: str | None) -> DLDAblationConfig:
    """The ablation's config of a profile, its reference on the given classifier checkpoint if any."""
    config = ablation_config(profile)
    return replace(config, reference=replace(config.reference, classifier_checkpoint=checkpoint)) if checkpoint else config


register_pipeline("dld-ablation", config=_pipeline_config, run=run_dld_ablation)
