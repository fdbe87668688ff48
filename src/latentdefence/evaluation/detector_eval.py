"""Evaluate any detector like an attacker would, in one call: AutoAttack's idea applied to detectors.

`evaluate_detector(detector, images, labels, ThreatModel("linf", 0.3), version="standard", calibration=cal)`
runs every attack that applies to the detector at a named version's budgets (`VERSIONS`: quick / standard /
thorough), keeps per image the worst case, computes robustness (correct, or misclassified and flagged), the
undetected success rate at the detector's own threshold and at 1% / 5% FPR (thresholds from the clean
`calibration` images only), all with Wilson intervals, and runs sanity checks that warn in the report
(Carlini et al. 2019, arXiv:1902.06705; Tramer et al. 2020, arXiv:2002.08347). `DetectorEvaluation.write(out)`
writes results.json, report.md and figures.

A detector needs only `classifier` (F) and `predict(images)` returning `.predicted`, `.is_adversarial` and
`.nonconformity` (higher = more suspicious; `.per_layer` optional). Attacks that need more run only where the
detector has it: `surrogate_score(images, classes)` for selective / orthogonal PGD; `latents`, `indexes_` and
`k` for guide-point soft k-NN. A paper's own attack on its own detector registers here from the paper's package
(`register_paper_attack`; DLD's Section V-B attack, with its encoder-decoders, from `latentdefence.dld`), so this
module knows no paper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from .._progress import steps, track
from .._io import environment_info, git_revision, staged_folder, write_json
from .._seed import seed_everything
from ..attacks import AutoAttack, evaluation_attacks
from ..attacks.base import attack_in_batches, in_batches
from ..detectors.base import Detection, Detector, Evaluable, check_attainable_fpr, evaded
from .._timing import StageTimer
from .compare import paired_within_run
from .attack_plan import applicable, detector_attack, detector_attacks, in_evaluation, paper_attack, pgd_on_f
from .detection import detection_metrics, verdicts, worst_case
from .detector_report import report, write_figures
from .resume import StageCheckpoints, evaluation_key
from .sanity import sanity_checks
from .threat import PAPER_ATTACKS, VERSIONS, Budget, ThreatModel
from .workers import Draws, Workers
from ..stats import wilson_interval
from ..validation import InputTypeError, InputValidationError, check_images, check_labels, check_number

@dataclass(frozen=True)
class DetectorEvaluation:
    """What `evaluate_detector` found: `results` (JSON-ready) and the adversarial images per detector and attack."""

    results: dict[str, Any]
    images: dict[str, dict[str, torch.Tensor]]

    def write(self, out_dir: str | Path, *, title: str | None = None, notes: Sequence[str] = (),
              extra: Mapping[str, Any] | None = None) -> Path:
        """results.json (with `extra` merged in), report.md (`notes` under the title) and figures; returns out_dir."""
        results = {**self.results, **(extra or {})}
        with staged_folder(out_dir) as staging:        # the figures, results and report appear together
            write_figures(staging, results)
            write_json(staging / "results.json", results)
            (staging / "report.md").write_text(report(results, title=title, notes=notes))
        return Path(out_dir)

    @property
    def warnings(self) -> list[str]:
        """Every sanity-check warning, detector named."""
        return list(self.results["warnings"])


def evaluate_detector(detector: Evaluable, images: torch.Tensor, labels: torch.Tensor, threat_model: ThreatModel,
                      version: str = "standard", *, calibration: torch.Tensor, name: str = "detector",
                      encoders: Mapping[str, nn.Module] | None = None, **kwargs: Any) -> DetectorEvaluation:
    """One detector under every attack that applies to it (see `evaluate_detectors` for the arguments)."""
    return evaluate_detectors({name: detector}, images, labels, threat_model, version, calibration=calibration,
                              encoders={name: encoders} if encoders else None, **kwargs)


def evaluate_detectors(detectors: Mapping[str, Evaluable], images: torch.Tensor, labels: torch.Tensor,
                       threat_model: ThreatModel, version: str = "standard", *, calibration: torch.Tensor,
                       clean: tuple[torch.Tensor, torch.Tensor] | None = None,
                       encoders: Mapping[str, Mapping[str, nn.Module]] | None = None,
                       budget: Budget | None = None, sanity: Sequence[str] | None = None, budget_check: bool = False,
                       transfer_source: tuple[str, nn.Module] | None = None, fprs: Sequence[float] = (0.01, 0.05),
                       target_fpr: float | None = None, seed: int = 0,
                       attacks: Sequence[str] | None = None, resume: str | Path | None = None,
                       workers: Workers | None = None) -> DetectorEvaluation:
    """Detectors guarding one classifier F, under every attack that applies, on the same images.

    images (N, C, H, W) in [0, 1] and labels (N,): attacked. calibration (M, C, H, W): clean images never
    attacked, the only source of the SR@FPR thresholds. clean: (images, labels) for clean false positives and
    ROC negatives (default: the attacked images, clean). encoders: a DLD's encoder-decoders by detector name (the
    paper's adaptive attack needs them). budget: replaces the version's (then `version` only labels it).
    sanity: detectors to sanity-check (default all; () none). budget_check: re-run everything at twice the steps and
    restarts on the same images and report the change. transfer_source: (description, model), a model whose
    PGD examples are judged by each checked detector (transfer check). target_fpr: per-layer thresholds (default: the
    detector's `target_fpr_`, else 0.02). attacks: the detector-aware attacks to run where they apply (default
    all; PGD and the AutoAttack cascade on F always run), e.g. a cheaper sweep over operating points; the report
    then lists the others as skipped. resume: a folder where each finished attack stage is kept as it ends; running
    the same evaluation again loads those stages and continues with the same random numbers (`resume.py`), so a
    killed run loses at most one stage and gives the uninterrupted run's results; `resumed` in the results lists
    the stages loaded. workers: the processes this evaluation is split over (`Workers.from_environment()` under
    torchrun): each attacks its block of the images (the sanity checks' too), the blocks are gathered, and every
    process returns the same evaluation. Random numbers are drawn per image and stage (`attacks.ImageStreams`) and each
    process takes whole batches, so N processes give one process's adversarial images bit for bit at the same batch
    size; another batch size gives the same per-image outcomes unless float rounding, summed in another order,
    decides one (docs/detectors.md).
    """
    if version not in VERSIONS and budget is None:
        raise ValueError(f"unknown version {version!r}; choose one of {', '.join(VERSIONS)}")
    if not detectors:
        raise ValueError("no detectors to evaluate")
    _check_contract(detectors)
    images, labels, calibration, clean = _check_arguments(
        next(iter(detectors.values())).classifier, images, labels, calibration, clean, fprs, target_fpr,
        {"encoders": encoders or {}, "sanity": sanity or ()}, detectors)
    b = budget or VERSIONS[version]
    unknown = sorted(set(attacks or ()) - set(detector_attacks()))
    if unknown:
        raise ValueError(f"unknown detector-aware attacks {unknown}; choose from {list(detector_attacks())}")
    clean_images, clean_labels = clean
    timer, generator, revision = StageTimer(), seed_everything(seed), git_revision()  # the code that runs
    key = _resume_key(detectors, images, labels, threat_model, b, seed, attacks, encoders or {}) \
        if resume is not None or workers is not None else ""
    if workers is not None:
        workers.check_same(key, "evaluation (settings, images, F, detectors' scores and thresholds)")
    checkpoints = StageCheckpoints(resume, key if resume is not None else "")
    draws = Draws(seed, generator, workers, b.batch_size)
    draws.mine(len(images))                       # too few batches for the processes: refused before any attack
    sets, robust_after, skipped = _attack_all(detectors, images, labels, threat_model, b, encoders or {}, draws,
                                              timer, attacks, checkpoints)
    with timer.timed("evaluate"):
        cal = {n: verdicts(d, calibration) for n, d in detectors.items()}
        scored = {n: {k: verdicts(d, imgs) for k, imgs in sets[n].items()} for n, d in detectors.items()}  # once
        results: dict[str, Any] = {"threat_model": asdict(threat_model), "version": version,
                                   "budget": asdict(b), "versions": {k: asdict(v) for k, v in VERSIONS.items()},
                                   "detectors": {}, "warnings": _unkept_fprs(fprs, len(calibration))}
        for n, det in detectors.items():
            results["detectors"][n] = _metrics(det, labels, clean_images, clean_labels, cal[n], scored[n], fprs,
                                               target_fpr)
            results["detectors"][n]["skipped"] = skipped[n]
        results["classifier_alone"] = {"autoattack_robust_accuracy_after": robust_after, "n": len(labels)}
        results["classifier_alone_broken_images"] = _broken_on_classifier(detectors, labels, sets)
        results["paired"] = paired_within_run(results)
    with timer.timed("sanity_checks"):
        checked = list(detectors) if sanity is None else sanity          # () checks none
        results["sanity"] = {n: sanity_checks(detectors[n], n, images, labels, threat_model, b, sets[n], scored[n],
                                              results, transfer_source, draws) for n in checked}   # split like the rest
    results["warnings"] += [w for s in results["sanity"].values() for w in s["warnings"]]
    if workers is not None:
        results["warnings"] += _split_dependent(sets)
    if budget_check:
        with timer.timed("budget_check"):
            twice, _, _ = _attack_all(detectors, images, labels, threat_model, b.doubled(), encoders or {},
                                      draws, StageTimer(), attacks)
            results["budget_check"] = {n: _budget_change(labels, scored[n],
                                                         {k: verdicts(d, v) for k, v in twice[n].items()})
                                       for n, d in detectors.items()}
    results["wall_time_s"] = timer.wall_time_s
    results["n"] = len(labels)
    results["resumed"] = checkpoints.resumed           # attack stages loaded from an earlier, interrupted run
    results["processes"] = workers.world_size if workers else 1
    results["random_draws"] = RANDOM_DRAWS
    results.update(seed=seed, git_revision=revision, environment=environment_info())  # how to re-run it
    return DetectorEvaluation(results, sets)


def _check_contract(detectors: Mapping[str, Evaluable]) -> None:
    """Every detector has `classifier` and `predict`, and all guard the same F."""
    for n, det in detectors.items():
        missing = [a for a in ("classifier", "predict") if not hasattr(det, a)]
        if missing:
            raise TypeError(f"detector {n!r} lacks {missing}: a detector needs `classifier` (F) and `predict`")
    first = next(iter(detectors.values())).classifier
    other = [n for n, d in detectors.items() if d.classifier is not first]
    if other:
        raise ValueError(f"detectors {other} guard another classifier than the first; evaluate them separately")


def _unkept_fprs(fprs: Sequence[float], n: int) -> list[str]:
    """A warning per operating point n calibration images cannot promise (below 1/(n+1)): its threshold sits at the
    top calibration score, so its row is not a rate at that FP."""
    unkept = []
    for fpr in fprs:
        try:
            check_attainable_fpr(fpr, n, "fprs")
        except InputValidationError as err:
            unkept.append(str(err))
    return unkept


def _check_arguments(classifier: nn.Module, images: Any, labels: Any, calibration: Any,
                     clean: tuple[torch.Tensor, torch.Tensor] | None, fprs: Sequence[float], target_fpr: float | None,
                     named: Mapping[str, Any], detectors: Mapping[str, Evaluable]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Every argument checked by name before the first attack (an evaluation can take hours; a bad `fprs` or a
    calibration `ImageDataset` found afterwards wastes them): images, labels, calibration and clean images of F's
    input shape, each operating point one the calibration set can keep, names that are detectors'."""
    shape = getattr(classifier, "input_shape", None)
    images = check_images(images, shape=shape)
    labels = check_labels(labels, len(images), getattr(classifier, "num_classes", None))
    if not isinstance(calibration, torch.Tensor):
        raise InputTypeError("calibration", f"must be a tensor of clean images (M, C, H, W), got "
                             f"{type(calibration).__name__}" + (" (pass its .images)" if hasattr(calibration, "images")
                                                               else ""))
    calibration = check_images(calibration, "calibration", shape=shape)
    if clean is None:
        clean = (images, labels)
    elif not isinstance(clean, tuple) or len(clean) != 2:
        raise InputTypeError("clean", f"must be a tuple (images, labels), got {type(clean).__name__}")
    else:
        clean_images = check_images(clean[0], "clean images", shape=shape)
        clean = (clean_images, check_labels(clean[1], len(clean_images), getattr(classifier, "num_classes", None),
                                            name="clean labels"))
    if isinstance(fprs, (str, bytes)) or not isinstance(fprs, Sequence) or not fprs:
        raise InputTypeError("fprs", f"must be a non-empty sequence of false-positive rates, got {fprs!r}")
    for fpr in fprs:
        check_number("fprs", fpr, low=0.0, high=1.0, low_open=True, high_open=True)
    if target_fpr is not None:
        check_number("target_fpr", target_fpr, low=0.0, high=1.0, high_open=True)
    for argument, names in named.items():
        unknown = sorted(set(names) - set(detectors))
        if unknown:
            raise InputValidationError(argument, f"names {unknown}, which are not among the detectors "
                                       f"{list(detectors)}")
    return images, labels, calibration, clean


def _resume_key(detectors: Mapping[str, Evaluable], images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel,
                b: Budget, seed: int, attacks: Sequence[str] | None, encoders: Mapping[str, Any]) -> str:
    """What makes a kept stage this evaluation's: the settings, the images, F's weights and each detector's scores on
    the first images and their thresholds (another detector under the same name judges them differently)."""
    probe = [verdicts(d, images[:32]) for d in detectors.values()]
    scores = [t for v in probe for t in (v.nonconformity.double(), v.is_adversarial.bool())]
    weights = list(next(iter(detectors.values())).classifier.state_dict().values())
    thresholds = {n: getattr(d, "threshold_", None) for n, d in detectors.items()}
    return evaluation_key({"threat": asdict(threat), "budget": asdict(b), "seed": seed, "attacks": attacks,
                           "detectors": list(detectors), "thresholds": thresholds, "encoders": sorted(encoders),
                           "random_draws": RANDOM_DRAWS},
                          [images, labels, *scores, *weights])


# -- attacks --------------------------------------------------------------------------------------
RANDOM_DRAWS = "per image and stage, sanity checks too (ImageStreams/2)"   # results.json; /1: sanity drew per batch


def _attack_all(detectors: Mapping[str, Evaluable], images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel,
                b: Budget, encoders: Mapping[str, Mapping[str, nn.Module]], draws: Draws,
                timer: StageTimer, only: Sequence[str] | None = None, checkpoints: StageCheckpoints | None = None
                ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float], dict[str, dict[str, str]]]:
    """(adversarial images per detector and attack, F's robust accuracy after each cascade stage, skipped attacks);
    `only`: the detector-aware attacks to run (None: every one that applies); `checkpoints`: where finished stages
    are kept and resumed from. Each process attacks its block of the images; the blocks are gathered at the end."""
    kept = checkpoints or StageCheckpoints(None, "")
    classifier = next(iter(detectors.values())).classifier
    plan, skipped = {}, {}
    for name, det in detectors.items():
        kinds, skipped[name] = applicable(det, threat, encoders.get(name))
        if only is not None:
            skipped[name].update({k: "not in this run's attacks" for k in kinds if k not in only})
            kinds = [k for k in kinds if k in only]
        plan[name] = kinds
    block = draws.mine(len(images))
    x, y, generator = images[block], labels[block], draws.generator
    with steps("attack stages", 2 + sum(map(len, plan.values()))) as stage_done:
        with timer.timed("attack_pgd"):
            pgd = pgd_on_f(threat, b, draws.streams("pgd"))
            shared = {"pgd": kept.stage(draws.stage("pgd"), generator, lambda: ({"images": attack_in_batches(
                classifier, pgd, x, y, batch_size=b.batch_size, desc="pgd on F").images}, None))[0]["images"]}
        stage_done("pgd on F")
        with timer.timed("attack_autoattack"):
            aa = AutoAttack(threat.eps, b.autoattack_steps, n_target_classes=b.autoattack_targets,
                            square_queries=b.square_queries, restarts=b.autoattack_restarts, norm=threat.norm,
                            generator=draws.streams("autoattack"))
            out, after = kept.stage(draws.stage("autoattack"), generator, lambda: _as_stage(
                _autoattack(aa, classifier, x, y, b.batch_size)))
            shared["autoattack"] = out["images"]
            robust_after = {k: draws.total(v * len(y)) / len(labels) for k, v in after.items()}
        stage_done("autoattack on F")
        sets: dict[str, dict[str, torch.Tensor]] = {}
        for name, det in detectors.items():
            sets[name] = dict(shared)
            for kind in plan[name]:
                with timer.timed(f"attack_{kind}" if paper_attack(kind) is not None else f"attack_{kind}_{name}"):
                    stage = f"{kind}--{name}"
                    sets[name][kind] = kept.stage(draws.stage(stage), generator, lambda: ({"images": _detector_aware(
                        kind, name, det, encoders, x, y, shared, threat, b, draws, stage)}, None))[0]["images"]
                stage_done(f"{kind} on {name}")
    whole = {k: draws.whole(v) for k, v in shared.items()}
    return ({name: {kind: whole[kind] if kind in whole else draws.whole(v) for kind, v in kinds.items()}
             for name, kinds in sets.items()}, robust_after, skipped)


def _split_dependent(sets: Mapping[str, Mapping[str, torch.Tensor]]) -> list[str]:
    """A warning per registered attack that drew from a torch.Generator in a split evaluation."""
    ran = {kind for per in sets.values() for kind in per if kind in evaluation_attacks()}
    return [f"{kind}: draws from one generator per process (its `InEvaluation.per_image_draws` is False), so its "
            "outcomes may depend on how the images were split" for kind in sorted(ran)
            if not in_evaluation(kind).per_image_draws]


def _as_stage(result: tuple[torch.Tensor, dict[str, float]]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The cascade's (images, robust accuracy after each stage) as a kept stage's (tensors, JSON value)."""
    return {"images": result[0]}, result[1]


def _detector_aware(kind: str, name: str, det: Evaluable, encoders: Mapping[str, Mapping[str, nn.Module]],
                    images: torch.Tensor, labels: torch.Tensor, shared: Mapping[str, torch.Tensor],
                    threat: ThreatModel, b: Budget, draws: Draws, stage: str) -> torch.Tensor:
    """Adversarial images of one detector-aware attack on detector `name` (this process's block of them)."""
    paper = paper_attack(kind)
    if paper is not None:
        return paper.run(det, encoders[name], images, labels, threat.eps, b, draws.streams(stage), draws.image_mean)
    randomness = draws.streams(stage) if in_evaluation(kind).per_image_draws else draws.stage_generator(stage)
    attack = detector_attack(kind, threat, b, randomness)
    start_from = in_evaluation(kind).starts
    starts = shared[start_from] if start_from else None   # e.g. selective: F already fooled, only hide it
    target = cast(Detector, det)            # the attack's `applies` checked what it needs beyond `Evaluable`
    return in_batches(lambda x, y, s: attack(target, x, y, starts=s).images, images, labels, starts,
                      batch_size=b.batch_size, desc=f"{kind} on {name}")


def _broken_on_classifier(detectors: Mapping[str, Evaluable], labels: torch.Tensor,
                          sets: Mapping[str, Mapping[str, torch.Tensor]]) -> list[int]:
    """Images F alone gets wrong under PGD or the cascade (the attacks every detector's run shares), by index."""
    from .metrics import batched_predict

    classifier, shared = next(iter(detectors.values())).classifier, next(iter(sets.values()))
    broken = torch.zeros(len(labels), dtype=torch.bool)
    for kind in ("pgd", "autoattack"):
        broken |= batched_predict(classifier, shared[kind]) != labels.cpu()
    return torch.nonzero(broken).flatten().tolist()


def _autoattack(attack: AutoAttack, classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                batch_size: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The cascade in batches; robust accuracy after each stage over all images."""
    adv: list[torch.Tensor] = []
    robust: dict[str, float] = {}
    for i in track(range(0, len(images), batch_size), "autoattack on F"):
        result, after = attack.evaluate(classifier, images[i:i + batch_size], labels[i:i + batch_size])
        adv.append(result.images)
        for stage, value in after.items():
            robust[stage] = robust.get(stage, 0.0) + value * len(result.images)
    return torch.cat(adv), {k: v / len(images) for k, v in robust.items()}


# -- metrics --------------------------------------------------------------------------------------
def _broken(v: Detection, labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool: misclassified and not flagged."""
    return evaded(v, labels)


def _metrics(det: Evaluable, labels: torch.Tensor, clean_images: torch.Tensor, clean_labels: torch.Tensor,
             v_cal: Detection, v: Mapping[str, Detection], fprs: Sequence[float],
             target_fpr: float | None) -> dict[str, Any]:
    """Clean FP, each attack's metrics (from the verdicts `v` on its images), the worst case over the paper's and
    over all attacks."""
    v_clean = verdicts(det, clean_images)
    tfpr = target_fpr if target_fpr is not None else float(getattr(det, "target_fpr_", 0.02))
    threshold = getattr(det, "threshold_", None)
    out: dict[str, Any] = {"threshold": None if threshold is None else float(threshold),
           "clean": {"n": len(clean_labels), "fpr": float(v_clean.is_adversarial.float().mean()),
                     "accuracy": float((v_clean.predicted == clean_labels).float().mean()),
                     "calibration_fpr": float(v_cal.is_adversarial.float().mean())},
           "attacks": {k: detection_metrics(labels, x, v_clean, v_cal, fprs, tfpr) for k, x in v.items()},
           "paper_attacks": worst_case(labels, {k: v[k] for k in PAPER_ATTACKS if k in v}, v_cal, fprs),
           "all_attacks": worst_case(labels, v, v_cal, fprs)}
    for key in ("paper_attacks", "all_attacks"):
        w = out[key]
        w["robustness_ci"] = wilson_interval(round(w["robustness"] * w["n"]), w["n"])
        w["sr_at_fpr_ci"] = {f: wilson_interval(round(r * w["n"]), w["n"]) for f, r in w["sr_at_fpr"].items()}
        w["strongest"] = min(w["attacks"], key=lambda k: (out["attacks"][k]["robustness"], k))
    return out


def _budget_change(labels: torch.Tensor, once: Mapping[str, Detection],
                   twice: Mapping[str, Detection]) -> dict[str, Any]:
    """Worst-case robustness at the budget and at twice it, the change, and the images only the doubled run broke."""
    b1 = torch.stack([_broken(v, labels) for v in once.values()]).any(0)
    b2 = torch.stack([_broken(v, labels) for v in twice.values()]).any(0)
    n, new = len(labels), int((b2 & ~b1).sum())
    r1, r2 = 1 - float(b1.float().mean()), 1 - float(b2.float().mean())
    return {"n": n, "robustness": r1, "robustness_ci": wilson_interval(round(r1 * n), n), "robustness_doubled": r2,
            "robustness_doubled_ci": wilson_interval(round(r2 * n), n), "change": r2 - r1,
            "newly_broken": new, "newly_broken_ci": wilson_interval(new, n),
            "robustness_both": 1 - float((b1 | b2).float().mean())}
