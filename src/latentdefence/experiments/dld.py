"""DLD experiments: Table I, Table II and Fig. 3 of Zizzo et al. (arXiv:1910.03334), one typed config.

Profiles: ``paper`` (the paper's settings, for a GPU), ``cpu`` (a documented reduction: about an hour
on 2 CPU cores for MNIST, slow attacks on subsets with Wilson intervals) and ``smoke`` (seconds, CI).
``run_dld(config, out_dir)`` caches the classifier, encoders and adversarial sets by their settings;
``build_dld(config) -> DLDBuild`` is what the ablation and the adaptive evaluation share of it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .._io import atomic_path, environment_info, git_revision, read_json, write_json
from .._seed import seed_everything
from ..data.base import ImageDataset
from ..detectors import calibrate_threshold
from ..dld import DeepLatentDefence
from ..dld.diagnostics import encoder_diagnostics
from ..evaluation.detection import attack_metrics, clean_metrics, cumulative_layers
from ..stats import roc_auc
from .._timing import StageTimer
from .cache import any_complete_stage, build_seconds, run_wall_time
from .registry import register_pipeline


from .dld_config import PAPER, DLDExperimentConfig, dld_config
from .dld_report import write_figures, write_report
from .dld_stages import adaptive_sweep, build_dld, dataset_splits


# -- the run ------------------------------------------------------------------------------------
def run_dld(config: DLDExperimentConfig, out_dir: str | Path, cache_root: Path | None = None) -> dict[str, Any]:
    """Run the whole DLD pipeline; write results.json, report.md and figures to `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timer, generator = StageTimer(), seed_everything(config.seed)
    revision = git_revision()  # the code that runs, not whatever HEAD is when the run ends
    started, from_scratch = time.perf_counter(), not any_complete_stage(cache_root)
    build = build_dld(config, cache_root, timer)
    train, cal, clean, classifier = build.train, build.calibration, build.clean, build.classifier
    encoders, enc_dir, detector = build.encoders, build.encoders_dir, build.detector
    adversarial: dict[str, dict[str, torch.Tensor]] = {}
    for name in ("fgsm", "pgd", "cw"):
        with timer.timed(f"attack_{name}"):
            adversarial[name] = build.grey_box(name, generator)
    with timer.timed("attack_adaptive"):
        sweep = adaptive_sweep(config, classifier, encoders, detector, enc_dir.name, clean, cache_root,
                          generator)
    with timer.timed("evaluate"):
        results = _evaluate(config, detector, cal, clean, adversarial, sweep)
    with timer.timed("diagnostics"):
        results["diagnostics"] = encoder_diagnostics(classifier, encoders, detector, clean,
                                                     {name: adversarial[name] for name in ("fgsm", "pgd")})
        log = enc_dir / "training_log.json"
        results["encoder_training"] = read_json(log) if log.is_file() else None
    with timer.timed("figures"):
        write_figures(out, detector, clean, adversarial, sweep, results)
    results.update(settings=asdict(config), seed=config.seed, git_revision=revision,
                   environment=environment_info(), wall_time_s=timer.wall_time_s,
                   stage_build_time_s={"encoders": build_seconds(enc_dir)},  # also when this run reused them
                   **run_wall_time(started, from_scratch),
                   dataset_sizes={"train": len(train), "calibration": len(cal), "clean_eval": len(clean)},
                   data=dataset_splits(config.dataset, config.data_dir).provenance)
    _ship_detector(out, detector, enc_dir, config)
    write_json(out / "results.json", results)
    write_report(out / "report.md", config, results)
    return results


def _ship_detector(out: Path, detector: DeepLatentDefence, enc_dir: Path, config: DLDExperimentConfig) -> None:
    """The calibrated detector artifact and its encoder-decoders beside the results, so `latentdefence serve`,
    `evaluate-detector` (whose paper adaptive attack needs the decoders) and the examples work without training."""
    import shutil

    detector.save(out / "detector.safetensors", {"dataset": config.dataset, "profile": config.profile,
                                                 "eps": config.attacks.eps, "target_fpr": config.target_fpr})
    with atomic_path(out / "encoders.safetensors") as tmp:
        shutil.copyfile(enc_dir / "encoders.safetensors", tmp)


# -- evaluation ---------------------------------------------------------------------------------
def _evaluate(config: DLDExperimentConfig, det: DeepLatentDefence, cal: ImageDataset, clean: ImageDataset,
              adversarial: dict[str, dict[str, torch.Tensor]], sweep: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Table I, Table II (on CW, as in the paper), Fig. 3 and the clean false positives."""
    ref = CleanReference.of(det, clean, cal, PAPER[config.dataset]["fpr"] / 100)
    clean_pred, clean_score, clean_per = ref.predicted, ref.score, ref.per_layer
    clean_flag = clean_score > det.threshold_
    table1, scored = {}, {}
    for name, adv in adversarial.items():
        scored[name] = det.nonconformity(adv["images"])
        table1[name] = attack_row(det, adv["labels"], scored[name], ref, config.target_fpr)
    fig3 = {}
    for key in (k for k in sweep if k.startswith("alpha2=")):
        fig3[key.split("=")[1]] = attack_row(det, sweep["labels"], det.nonconformity(sweep[key]), ref, config.target_fpr)
    strongest, ties = strongest_alpha2({k: v["robustness"] for k, v in fig3.items()})
    table1["adaptive"] = {**fig3[strongest], "alpha2": float(strongest)}
    cal_per = ref.calibration_per_layer
    cal_score = torch.stack(list(cal_per.values())).sum(0)
    cw_pred, _, cw_per = scored["cw"]
    table2 = cumulative_layers(list(config.taps), cal_per, clean_per, clean_pred != clean.labels, cw_per,
                               cw_pred != adversarial["cw"]["labels"], config.target_fpr)
    clean_stats = clean_metrics(clean.labels, clean_pred, clean_flag)
    return {"fpr": clean_stats.fpr, "clean": clean_stats.as_dict(), "threshold": det.threshold_,
            "calibration_fpr": float((cal_score > det.threshold_).float().mean()), "table1": table1,
            "table2": table2, "cw_fool_rate": 1.0 - table1["cw"]["base_accuracy"],
            "fig3": {"alpha1": config.attacks.alpha1, "combine": config.attacks.centroid_combine,
                     "robustness": {k: v["robustness"] for k, v in fig3.items()}, "rows": fig3,
                     "strongest_alpha2": float(strongest), "tied_alpha2": [float(k) for k in ties]},
            "pruned": det.pruned_}


def strongest_alpha2(robustness: dict[str, float]) -> tuple[str, list[str]]:
    """The alpha2 key with the lowest robustness (ties: the smallest alpha2) and every key tied with it."""
    low = min(robustness.values())
    ties = sorted((k for k, v in robustness.items() if v == low), key=float)
    return ties[0], ties


@dataclass(frozen=True)
class CleanReference:
    """The clean side of every ROC: evaluation images' labels and scores, and the calibration set's per-layer scores."""

    labels: torch.Tensor
    predicted: torch.Tensor
    score: torch.Tensor
    per_layer: dict[str, torch.Tensor]
    calibration_per_layer: dict[str, torch.Tensor]
    paper_fpr: float

    @classmethod
    def of(cls, det: DeepLatentDefence, clean: ImageDataset, cal: ImageDataset, paper_fpr: float) -> "CleanReference":
        pred, score, per = det.nonconformity(clean.images)
        return cls(clean.labels, pred, score, per, det.nonconformity(cal.images)[2], paper_fpr)


def attack_row(det: DeepLatentDefence, labels: torch.Tensor, scored: tuple[torch.Tensor, torch.Tensor, Any],
         ref: CleanReference, target_fpr: float) -> dict[str, Any]:
    """Table I metrics plus: the AUC with every adversarial as positive, with correctly classified clean images
    as negatives, its 95% interval, the ROC point at the paper's FP rate, per-layer AUCs and the per-layer
    OR rule (each layer its own threshold, one joint calibrated FP)."""
    from ..evaluation.detection import max_layer_score, tpr_at_fpr
    from ..stats import auc_interval

    pred, score, per = scored
    wrong = pred != labels
    correct_clean = ref.predicted == ref.labels
    metrics = attack_metrics(labels, pred, score > det.threshold_, score, ref.score).as_dict()
    adv_max = max_layer_score(per, ref.calibration_per_layer)
    clean_max = max_layer_score(ref.per_layer, ref.calibration_per_layer)
    or_threshold = calibrate_threshold(max_layer_score(ref.calibration_per_layer, ref.calibration_per_layer), target_fpr)
    auc_correct = roc_auc(score[wrong], ref.score[correct_clean])
    return {**metrics,
            "roc_auc_ci": auc_interval(metrics["roc_auc"], int(wrong.sum()), len(ref.score)),
            "roc_auc_correct_negatives": auc_correct,
            "roc_auc_correct_negatives_ci": auc_interval(auc_correct, int(wrong.sum()), int(correct_clean.sum())),
            "roc_auc_all_adversarial": roc_auc(score, ref.score),
            "tpr_at_paper_fpr": tpr_at_fpr(score[wrong], ref.score, ref.paper_fpr),
            "roc_auc_per_layer": {tap: roc_auc(per[tap][wrong], ref.per_layer[tap]) for tap in per},
            "or_rule": {"roc_auc": roc_auc(adv_max[wrong], clean_max),
                        "true_positive_rate": float((adv_max[wrong] > or_threshold).float().mean()) if wrong.any()
                        else float("nan"),
                        "robustness": float(((~wrong) | (adv_max > or_threshold)).float().mean()),
                        "clean_fpr": float((clean_max > or_threshold).float().mean())}}


def _pipeline_config(profile: str, dataset: str, data_dir: str | None, checkpoint: str | None) -> DLDExperimentConfig:
    """The DLD pipeline's config of a profile, on the given classifier checkpoint if any."""
    config = dld_config(profile, dataset, data_dir)
    return replace(config, classifier_checkpoint=checkpoint) if checkpoint else config


register_pipeline("dld", config=_pipeline_config, run=run_dld)
