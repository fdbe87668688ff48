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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._progress import steps, track
from .._io import environment_info, git_revision, save_figure, staged_folder, write_json
from .._registry import Registry
from .._seed import seed_everything
from ..attacks import PGD, AutoAttack, InEvaluation, attack_entry, create_attack, evaluation_attacks
from ..attacks.base import attack_in_batches, in_batches
from ..attacks.detector_aware import DetectorAttack
from ..detectors.base import Detection, check_attainable_fpr, evaded
from .._timing import StageTimer
from .compare import paired_lines, paired_within_run
from .detection import detection_metrics, verdicts, worst_case
from ..stats import wilson_interval
from ..validation import InputTypeError, InputValidationError, check_images, check_labels, check_number

ON_F_ALONE = ("pgd", "autoattack")                                 # know F only (transfer to the detector)
PAPER_ATTACKS = ("pgd", "adaptive_paper")                          # DLD paper's own evaluation
EPS_SWEEP_FLOOR = 0.05       # robustness at the largest eps of the sweep above this: warn (should reach ~0)


@dataclass(frozen=True)
class ThreatModel:
    """The attacker's budget: an L-inf or L2 ball of radius eps around each clean image, untargeted."""

    norm: str = "linf"
    eps: float = 0.3

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"threat model norm must be 'linf' or 'l2', got {self.norm!r}")
        if not self.eps > 0:
            raise ValueError(f"threat model eps must be > 0, got {self.eps}")


@dataclass(frozen=True)
class Budget:
    """One version's attack budgets (every attack that applies runs at these)."""

    pgd_steps: int = 100                  # PGD on F alone (the DLD paper's grey-box attack)
    pgd_restarts: int = 1
    pgd_step: float | None = None         # PGD's and the adaptive attack's step, a fraction of eps; None: 2.5 / steps
    steps: int = 100                      # detector-aware attacks: guide points, selective, orthogonal
    restarts: int = 1
    n_targets: int = 3                    # guide points' target classes
    check_every: int = 5
    refresh_every: int = 10
    adaptive_steps: int = 100             # DLD's adaptive attack: ensemble PGD, then Eq. 10 per alpha2
    centroid_steps: int = 100
    alpha1: float = 1.0
    alpha2: tuple[float, ...] = (0.25, 1.0, 4.0, 16.0)
    autoattack_steps: int = 100           # F alone: APGD-CE, APGD-T, Square
    autoattack_targets: int = 9
    autoattack_restarts: int = 1
    square_queries: int = 5000            # also Square on F + detector
    square_restarts: int = 1
    n_sanity: int = 200                   # images for the sanity checks
    eps_sweep: tuple[float, ...] = (1 / 3, 2 / 3, 1.0, 4 / 3, 5 / 3)   # multiples of eps
    batch_size: int = 250

    def doubled(self) -> "Budget":
        """Twice the steps, restarts and queries of every attack (the budget check)."""
        return replace(self, pgd_steps=2 * self.pgd_steps, pgd_restarts=2 * self.pgd_restarts, steps=2 * self.steps,
                       restarts=2 * self.restarts, adaptive_steps=2 * self.adaptive_steps,
                       centroid_steps=2 * self.centroid_steps, autoattack_steps=2 * self.autoattack_steps,
                       autoattack_restarts=2 * self.autoattack_restarts, square_queries=2 * self.square_queries,
                       square_restarts=2 * self.square_restarts)


VERSIONS: dict[str, Budget] = {
    # the cpu budgets of `reproduce dld-mnist-adaptive` (about 40 min for four detectors on one core, n = 500)
    "quick": Budget(pgd_steps=40, pgd_step=1 / 30, steps=40, n_targets=2, adaptive_steps=50, centroid_steps=50,
                    alpha1=0.01,
                    alpha2=(5.0, 15.0), autoattack_steps=50, autoattack_targets=3, square_queries=500, n_sanity=100),
    # AutoAttack's standard budget on F (100 steps, 9 targets, 5000 Square queries); 2 restarts on the detector
    "standard": Budget(pgd_restarts=2, restarts=2),
    # more targets and restarts everywhere
    "thorough": Budget(pgd_restarts=5, steps=200, restarts=5, n_targets=9, adaptive_steps=200, centroid_steps=200,
                       alpha2=(0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 16.0), autoattack_restarts=5, square_restarts=2,
                       n_sanity=500),
}


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
            _figures(staging, results)
            write_json(staging / "results.json", results)
            (staging / "report.md").write_text(report(results, title=title, notes=notes))
        return Path(out_dir)

    @property
    def warnings(self) -> list[str]:
        """Every sanity-check warning, detector named."""
        return list(self.results["warnings"])


def evaluate_detector(detector: Any, images: torch.Tensor, labels: torch.Tensor, threat_model: ThreatModel,
                      version: str = "standard", *, calibration: torch.Tensor, name: str = "detector",
                      encoders: Mapping[str, nn.Module] | None = None, **kwargs: Any) -> DetectorEvaluation:
    """One detector under every attack that applies to it (see `evaluate_detectors` for the arguments)."""
    return evaluate_detectors({name: detector}, images, labels, threat_model, version, calibration=calibration,
                              encoders={name: encoders} if encoders else None, **kwargs)


def evaluate_detectors(detectors: Mapping[str, Any], images: torch.Tensor, labels: torch.Tensor,
                       threat_model: ThreatModel, version: str = "standard", *, calibration: torch.Tensor,
                       clean: tuple[torch.Tensor, torch.Tensor] | None = None,
                       encoders: Mapping[str, Mapping[str, nn.Module]] | None = None,
                       budget: Budget | None = None, sanity: Sequence[str] | None = None, budget_check: bool = False,
                       transfer_source: tuple[str, nn.Module] | None = None, fprs: Sequence[float] = (0.01, 0.05),
                       target_fpr: float | None = None, seed: int = 0,
                       attacks: Sequence[str] | None = None) -> DetectorEvaluation:
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
    then lists the others as skipped.
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
    sets, robust_after, skipped = _attack_all(detectors, images, labels, threat_model, b, encoders or {}, generator,
                                              timer, attacks)
    with timer.timed("evaluate"):
        cal = {n: verdicts(d, calibration) for n, d in detectors.items()}
        results: dict[str, Any] = {"threat_model": asdict(threat_model), "version": version,
                                   "budget": asdict(b), "versions": {k: asdict(v) for k, v in VERSIONS.items()},
                                   "detectors": {}, "warnings": _unkept_fprs(fprs, len(calibration))}
        for n, det in detectors.items():
            results["detectors"][n] = _metrics(det, labels, clean_images, clean_labels, cal[n], sets[n], fprs,
                                               target_fpr)
            results["detectors"][n]["skipped"] = skipped[n]
        results["classifier_alone"] = {"autoattack_robust_accuracy_after": robust_after, "n": len(labels)}
        results["classifier_alone_broken_images"] = _broken_on_classifier(detectors, labels, sets)
        results["paired"] = paired_within_run(results)
    with timer.timed("sanity_checks"):
        checked = list(detectors) if sanity is None else sanity          # () checks none
        results["sanity"] = {n: _sanity(detectors[n], n, images, labels, threat_model, b, sets[n], results,
                                        transfer_source, generator) for n in checked}
    results["warnings"] += [w for s in results["sanity"].values() for w in s["warnings"]]
    if budget_check:
        with timer.timed("budget_check"):
            twice, _, _ = _attack_all(detectors, images, labels, threat_model, b.doubled(), encoders or {},
                                      generator, StageTimer(), attacks)
            results["budget_check"] = {n: _budget_change(labels, {k: verdicts(d, v) for k, v in sets[n].items()},
                                                         {k: verdicts(d, v) for k, v in twice[n].items()})
                                       for n, d in detectors.items()}
    results["wall_time_s"] = timer.wall_time_s
    results["n"] = len(labels)
    results.update(seed=seed, git_revision=revision, environment=environment_info())  # how to re-run it
    return DetectorEvaluation(results, sets)


def _check_contract(detectors: Mapping[str, Any]) -> None:
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
                     named: Mapping[str, Any], detectors: Mapping[str, Any]
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


# -- attacks --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PaperAttack:
    """A paper's own attack on its own detector, added to every evaluation once the paper's package is imported."""

    # (detector, threat model, the paper's extra modules for it or None) -> why it does not apply, or None
    applies: Callable[[Any, ThreatModel, Mapping[str, nn.Module] | None], str | None]
    # (detector, extras, images, labels, eps, budget, generator) -> adversarial images
    run: Callable[[Any, Mapping[str, nn.Module], torch.Tensor, torch.Tensor, float, "Budget", torch.Generator],
                  torch.Tensor]


_PAPER_ATTACKS: Registry[PaperAttack] = Registry("paper attack")


def register_paper_attack(name: str, attack: PaperAttack) -> None:
    """Add `attack` as `name` (its stage `attack_NAME`, its rows in results.json) to every detector evaluation."""
    _PAPER_ATTACKS.add(name, attack)


def applicable(detector: Any, threat: ThreatModel, extras: Mapping[str, nn.Module] | None = None
               ) -> tuple[list[str], dict[str, str]]:
    """(the detector-aware attacks that apply, {attack: why not} for the others)."""
    run, skipped = [], {}
    for name in _PAPER_ATTACKS.names():
        reason = _PAPER_ATTACKS.get(name).applies(detector, threat, extras)
        if reason is None:
            run.append(name)
        else:
            skipped[name] = reason
    for label, name in evaluation_attacks().items():
        reason = _in_evaluation(label).applies(detector, threat)
        if reason is None:
            run.append(label)
        else:
            skipped[label] = reason
    return run, skipped


def detector_attack(kind: str, threat: ThreatModel, b: Budget, generator: torch.Generator,
                    eps: float | None = None) -> DetectorAttack:
    """The registered detector attack labelled `kind` at budget `b` (eps: another radius, for the eps sweep)."""
    name = evaluation_attacks().get(kind)
    if name is None:
        raise ValueError(f"unknown detector attack {kind!r}; registered for evaluations: "
                         f"{', '.join(evaluation_attacks())}")
    norm = {"norm": threat.norm} if "norm" in attack_entry(name).parameters() else {}
    attack: DetectorAttack = create_attack(name, eps=threat.eps if eps is None else eps, generator=generator,
                                           **_in_evaluation(kind).settings(b), **norm)
    return attack


def _in_evaluation(kind: str) -> InEvaluation:
    """The evaluation spec of the registered detector attack labelled `kind`."""
    spec = attack_entry(evaluation_attacks()[kind]).evaluation
    assert spec is not None                 # evaluation_attacks lists only attacks with one
    return spec


def detector_attacks() -> tuple[str, ...]:
    """Every detector-aware attack an evaluation may run: the papers' own, then the registered ones, in order."""
    return (*_PAPER_ATTACKS.names(), *evaluation_attacks())


def _pgd(threat: ThreatModel, b: Budget, generator: torch.Generator, eps: float | None = None) -> PGD:
    e = threat.eps if eps is None else eps
    return PGD(eps=e, step_size=None if b.pgd_step is None else b.pgd_step * e, steps=b.pgd_steps,
               restarts=b.pgd_restarts, norm=threat.norm, generator=generator)


def _attack_all(detectors: Mapping[str, Any], images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel,
                b: Budget, encoders: Mapping[str, Mapping[str, nn.Module]], generator: torch.Generator,
                timer: StageTimer, only: Sequence[str] | None = None
                ) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, float], dict[str, dict[str, str]]]:
    """(adversarial images per detector and attack, F's robust accuracy after each cascade stage, skipped attacks);
    `only`: the detector-aware attacks to run (None: every one that applies)."""
    classifier = next(iter(detectors.values())).classifier
    plan, skipped = {}, {}
    for name, det in detectors.items():
        kinds, skipped[name] = applicable(det, threat, encoders.get(name))
        if only is not None:
            skipped[name].update({k: "not in this run's attacks" for k in kinds if k not in only})
            kinds = [k for k in kinds if k in only]
        plan[name] = kinds
    with steps("attack stages", 2 + sum(map(len, plan.values()))) as stage_done:
        with timer.timed("attack_pgd"):
            pgd = _pgd(threat, b, generator)
            shared = {"pgd": attack_in_batches(classifier, pgd, images, labels, batch_size=b.batch_size,
                                               desc="pgd on F").images}
        stage_done("pgd on F")
        with timer.timed("attack_autoattack"):
            aa = AutoAttack(threat.eps, b.autoattack_steps, n_target_classes=b.autoattack_targets,
                            square_queries=b.square_queries, restarts=b.autoattack_restarts, norm=threat.norm,
                            generator=generator)
            shared["autoattack"], robust_after = _autoattack(aa, classifier, images, labels, b.batch_size)
        stage_done("autoattack on F")
        sets: dict[str, dict[str, torch.Tensor]] = {}
        for name, det in detectors.items():
            sets[name] = dict(shared)
            for kind in plan[name]:
                with timer.timed(f"attack_{kind}" if kind in _PAPER_ATTACKS.names() else f"attack_{kind}_{name}"):
                    sets[name][kind] = _detector_aware(kind, name, det, encoders, images, labels, shared, threat,
                                                       b, generator)
                stage_done(f"{kind} on {name}")
    return sets, robust_after, skipped


def _detector_aware(kind: str, name: str, det: Any, encoders: Mapping[str, Mapping[str, nn.Module]],
                    images: torch.Tensor, labels: torch.Tensor, shared: Mapping[str, torch.Tensor],
                    threat: ThreatModel, b: Budget, generator: torch.Generator) -> torch.Tensor:
    """Adversarial images of one detector-aware attack on detector `name`."""
    if kind in _PAPER_ATTACKS.names():
        return _PAPER_ATTACKS.get(kind).run(det, encoders[name], images, labels, threat.eps, b, generator)
    attack = detector_attack(kind, threat, b, generator)
    start_from = _in_evaluation(kind).starts
    starts = shared[start_from] if start_from else None   # e.g. selective: F already fooled, only hide it
    return in_batches(lambda x, y, s: attack(det, x, y, starts=s).images, images, labels, starts,
                      batch_size=b.batch_size, desc=f"{kind} on {name}")


def _broken_on_classifier(detectors: Mapping[str, Any], labels: torch.Tensor,
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
def _robustness(v: Detection, labels: torch.Tensor) -> float:
    """Correct, or misclassified and flagged."""
    return float((~evaded(v, labels)).float().mean())


def _broken(v: Detection, labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool: misclassified and not flagged."""
    return evaded(v, labels)


def _metrics(det: Any, labels: torch.Tensor, clean_images: torch.Tensor, clean_labels: torch.Tensor,
             v_cal: Detection, sets: Mapping[str, torch.Tensor], fprs: Sequence[float],
             target_fpr: float | None) -> dict[str, Any]:
    """Clean FP, each attack's metrics, the worst case over the paper's and over all attacks."""
    v_clean = verdicts(det, clean_images)
    v = {k: verdicts(det, imgs) for k, imgs in sets.items()}
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


# -- sanity checks --------------------------------------------------------------------------------
def _sanity(det: Any, name: str, images: torch.Tensor, labels: torch.Tensor, threat: ThreatModel, b: Budget,
            sets: Mapping[str, torch.Tensor], results: Mapping[str, Any], transfer_source: tuple[str, nn.Module] | None,
            generator: torch.Generator) -> dict[str, Any]:
    """Carlini et al.'s checks on the detector's strongest detector-aware attack, on the first `n_sanity` images."""
    x, y = images[:b.n_sanity], labels[:b.n_sanity]
    attacks = results["detectors"][name]["attacks"]
    warnings: list[str] = []
    gradient = [k for k in evaluation_attacks() if _in_evaluation(k).gradient and k in attacks]
    strongest = min(gradient or [k for k in ("square", "pgd") if k in attacks],
                    key=lambda k: (attacks[k]["robustness"], k))

    def robustness(adv: torch.Tensor) -> float:
        return _robustness(verdicts(det, adv), y)

    def run(attack: Any, starts: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(attack, PGD):
            return attack_in_batches(det.classifier, attack, x, y, batch_size=b.batch_size).images
        return in_batches(lambda u, v, s: attack(det, u, v, starts=s).images, x, y, starts, batch_size=b.batch_size)

    def make(bud: Budget, eps: float | None = None) -> Any:
        return _pgd(threat, bud, generator, eps) if strongest == "pgd" else detector_attack(strongest, threat, bud,
                                                                                            generator, eps)
    start_from = _in_evaluation(strongest).starts if strongest in evaluation_attacks() else None
    starts = sets[start_from][:len(x)] if start_from else None   # as in the main run
    more: dict[str, Any] = {"attack": strongest, "budget": robustness(sets[strongest][:len(x)]),
            "double_steps_and_restarts": robustness(run(make(b.doubled()), starts))}
    if more["double_steps_and_restarts"] > more["budget"]:
        warnings.append(f"{name}: {strongest} with twice the steps and restarts gave higher robustness "
                        f"({100 * more['double_steps_and_restarts']:.1f}% vs {100 * more['budget']:.1f}%): "
                        "the attack is unstable at this budget")
    sweep: dict[str, Any] = {"eps": [round(f * threat.eps, 6) for f in b.eps_sweep],
                             "attack": f"{strongest} (random start)", "detector": [], "classifier_alone": []}
    for eps in sweep["eps"]:
        sweep["detector"].append(robustness(run(make(b, eps))))
        adv = run(_pgd(threat, b, generator, eps))
        with torch.no_grad():
            sweep["classifier_alone"].append(float((det.classifier(adv).argmax(1) == y).float().mean()))
    if sweep["detector"] and sweep["detector"][-1] > EPS_SWEEP_FLOOR:
        warnings.append(f"{name}: robustness stays at {100 * sweep['detector'][-1]:.1f}% at eps {sweep['eps'][-1]:g} "
                        f"(should fall to ~0 as eps grows): gradients may be masked or the attack too weak")
    out: dict[str, Any] = {"n": len(x), "more_iterations": more, "eps_sweep": sweep,
                           "gradient_free": _gradient_free(name, attacks, sets, det, labels, results, warnings),
                           "transfer_vs_white_box": _transfer(name, attacks, warnings),
                           "surrogate_gradients": _surrogate_gradients(det, name, x, warnings)}
    if transfer_source is not None:
        source, model = transfer_source
        adv = attack_in_batches(model, _pgd(threat, b, generator), x, y, batch_size=b.batch_size).images
        with torch.no_grad():
            own = float((model(adv).argmax(1) == y).float().mean())
        out["transfer"] = {"source": source,
                           "source_pgd_robust_accuracy": own, "robustness_transfer": robustness(adv),
                           "robustness_white_box": more["budget"]}
        if out["transfer"]["robustness_transfer"] < more["budget"]:
            warnings.append(f"{name}: PGD transferred from {out['transfer']['source']} beats the white-box {strongest}")
    out["warnings"] = warnings
    return out


def _gradient_free(name: str, attacks: Mapping[str, Any], sets: Mapping[str, torch.Tensor], det: Any,
                   labels: torch.Tensor, results: Mapping[str, Any], warnings: list[str]) -> dict[str, Any]:
    """Images Square (no gradients) broke that no gradient attack did; F alone: Square after APGD in the cascade."""
    after = results["classifier_alone"]["autoattack_robust_accuracy_after"]
    out: dict[str, Any] = {"classifier_alone_square_gain": after.get("apgd-t", 0.0) - after["square"]
                           if "square" in after else None}
    if out["classifier_alone_square_gain"]:
        warnings.append(f"{name}: on F alone Square broke {100 * out['classifier_alone_square_gain']:.1f}% that "
                        "APGD could not: F's gradients may be masked")
    if "square" not in sets:
        return {**out, "only_square": None}
    broken = {k: _broken(verdicts(det, v), labels) for k, v in sets.items()}
    gradient = torch.stack([v for k, v in broken.items() if k != "square"]).any(0)
    only = int((broken["square"] & ~gradient).sum())
    out.update(only_square=only, square_robustness=attacks["square"]["robustness"])
    if only:
        warnings.append(f"{name}: Square (gradient-free) broke {only} image(s) no gradient attack broke: "
                        "the detector's gradients may be masked")
    return out


def _transfer(name: str, attacks: Mapping[str, Any], warnings: list[str]) -> dict[str, Any]:
    """Attacks on F alone (transferred to the detector) against the detector-aware (white-box) ones."""
    white = [k for k in attacks if k not in ON_F_ALONE]
    if not white:
        return {"f_alone": None, "white_box": None}
    f_alone = min(attacks[k]["robustness"] for k in ON_F_ALONE if k in attacks)
    white_box = min(attacks[k]["robustness"] for k in white)
    if f_alone < white_box:
        warnings.append(f"{name}: attacks on F alone ({100 * f_alone:.1f}%) beat every detector-aware attack "
                        f"({100 * white_box:.1f}%): the white-box attacks are not working")
    return {"f_alone": f_alone, "white_box": white_box}


def _surrogate_gradients(det: Any, name: str, images: torch.Tensor, warnings: list[str]) -> dict[str, Any] | None:
    """Fraction of images where the surrogate's input gradient is zero or not finite (it then guides nothing)."""
    if not hasattr(det, "surrogate_score"):
        return None
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        with torch.no_grad():
            classes = det.classifier(x).argmax(1)
        grad, = torch.autograd.grad(det.surrogate_score(x, classes).sum(), x, allow_unused=True)
    norms = torch.zeros(len(x)) if grad is None else grad.detach().flatten(1).norm(dim=1).cpu()
    vanished = float(((norms < 1e-12) | ~torch.isfinite(norms)).float().mean())
    if vanished > 0.5:
        warnings.append(f"{name}: its surrogate_score's gradient vanishes on {100 * vanished:.0f}% of images: "
                        "selective / orthogonal PGD cannot move there; trust the gradient-free attack more")
    return {"vanished_fraction": vanished, "median_norm": float(norms.median()) if len(norms) else None}


# -- report and figures ---------------------------------------------------------------------------
def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _ci(ci: Sequence[float]) -> str:
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def report(results: Mapping[str, Any], *, title: str | None = None, notes: Sequence[str] = ()) -> str:
    """report.md: per detector a table of attacks and worst cases, F alone, the sanity checks, the budgets."""
    tm = results["threat_model"]
    lines = [f"# {title or 'Detector evaluation'}", "", *notes, "" if notes else "",
             f"Threat model: {tm['norm']}, eps {tm['eps']:g}, untargeted, white-box; {results['n']} images attacked; "
             f"version `{results['version']}`. Robustness = classified correctly, or misclassified and flagged. "
             "SR = undetected success rate (misclassified and not flagged); SR@FPR thresholds come from the clean "
             "calibration images only. Intervals: Wilson 95%.", ""]
    if results["warnings"]:
        lines += ["**Warnings (operating points and sanity checks):**", "", *[f"* WARNING: {w}" for w in results["warnings"]], ""]
    else:
        lines += ["No warnings: every operating point is one the calibration set can keep, and the sanity checks "
                  "found nothing (details below).", ""]
    for name, res in results["detectors"].items():
        threshold = "none recorded" if res["threshold"] is None else f"{res['threshold']:g}"
        lines += [f"## {name}", "", f"Clean FP {_pct(res['clean']['fpr'])}% (n {res['clean']['n']}), threshold "
                  f"{threshold}.", "",
                  "| attack | robustness [95% CI] | SR | SR@1% FPR | SR@5% FPR | ROC AUC | AUC per layer |",
                  "|---|---|---|---|---|---|---|"]
        for attack, row in res["attacks"].items():
            layers = ", ".join(f"{k} {v['roc_auc']:.3f}" for k, v in row["per_layer"].items())
            sr = row["sr_at_fpr"]
            lines.append(f"| {attack} | {_pct(row['robustness'])} {_ci(row['robustness_ci'])} | "
                         f"{_pct(row['undetected_success_rate'])} | {_pct(sr['0.01']['sr']) if '0.01' in sr else ''} | "
                         f"{_pct(sr['0.05']['sr']) if '0.05' in sr else ''} | {row['roc_auc']:.3f} | {layers} |")
        for key, label in (("paper_attacks", "worst case, paper's attacks"),
                           ("all_attacks", "worst case, all attacks")):
            w = res[key]
            sr = w["sr_at_fpr"]
            lines.append(f"| **{label}** | **{_pct(w['robustness'])}** {_ci(w.get('robustness_ci', (0, 1)))} | "
                         f"{_pct(w['undetected_success_rate'])} | {_pct(sr['0.01']) if '0.01' in sr else ''} | "
                         f"{_pct(sr['0.05']) if '0.05' in sr else ''} | | |")
        lines.append("")
        if res.get("skipped"):
            lines += ["Not run: " + "; ".join(f"{k} ({v})" for k, v in res["skipped"].items()) + ".", ""]
    aa = results["classifier_alone"]["autoattack_robust_accuracy_after"]
    lines += ["## F alone, AutoAttack-style cascade", "", "| after | robust accuracy |", "|---|---|"]
    lines += [f"| {k} | {_pct(v)} |" for k, v in aa.items()]
    lines += [""] + paired_lines(results) + _sanity_lines(results) + _budget_check_lines(results) + _budget_lines(results)
    if results.get("wall_time_s"):
        lines += ["Wall time (s): " + ", ".join(f"{k} {v}" for k, v in results["wall_time_s"].items())
                  + f"; total {sum(results['wall_time_s'].values()):.0f} s.", ""]
    return "\n".join(lines)


def _sanity_lines(results: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, s in results["sanity"].items():
        more, sweep, gf, tr = s["more_iterations"], s["eps_sweep"], s["gradient_free"], s["transfer_vs_white_box"]
        lines += [f"## Sanity checks: {name} (first {s['n']} images)", "",
                  f"* more steps: {more['attack']} {_pct(more['budget'])}% at the budget, "
                  f"{_pct(more['double_steps_and_restarts'])}% with twice the steps and restarts (must not rise).",
                  "* robustness against eps (`robustness_vs_eps.png`, should fall to ~0): " + ", ".join(
                      f"{e:g}: {100 * r:.1f}%" for e, r in zip(sweep["eps"], sweep["detector"]))
                  + " (F alone under PGD: " + ", ".join(f"{100 * r:.1f}%" for r in sweep["classifier_alone"]) + ")."]
        if gf.get("only_square") is not None:
            lines.append(f"* gradient-free: Square on F + detector broke {gf['only_square']} image(s) no gradient "
                         "attack broke (must be 0).")
        if tr["white_box"] is not None:
            lines.append(f"* transfer: attacks on F alone leave {_pct(tr['f_alone'])}%, detector-aware attacks "
                         f"{_pct(tr['white_box'])}% (F alone must not be lower).")
        if "transfer" in s:
            t = s["transfer"]
            lines.append(f"* transfer from {t['source']} (its own PGD robust accuracy "
                         f"{100 * t['source_pgd_robust_accuracy']:.1f}%): robustness {_pct(t['robustness_transfer'])}% "
                         f"vs {_pct(t['robustness_white_box'])}% white-box.")
        sg = s["surrogate_gradients"]
        lines.append("* surrogate gradients: " + ("no `surrogate_score`" if sg is None else
                     f"zero or not finite on {100 * sg['vanished_fraction']:.0f}% of images (warn above 50%)."))
        lines.append("")
    return lines


def _budget_check_lines(results: Mapping[str, Any]) -> list[str]:
    if "budget_check" not in results:
        return ["Budget check not run (`budget_check=True` re-runs every attack at twice the steps and restarts).", ""]
    lines = ["## Budget check: every attack at twice the steps and restarts, same images", "",
             "| detector | worst case at the budget | at 2x | change (pp) | images only 2x broke |",
             "|---|---|---|---|---|"]
    for name, c in results["budget_check"].items():
        lines.append(f"| {name} | {_pct(c['robustness'])} {_ci(c['robustness_ci'])} | {_pct(c['robustness_doubled'])} "
                     f"{_ci(c['robustness_doubled_ci'])} | {100 * c['change']:+.2f} | {c['newly_broken']} / {c['n']} "
                     f"({_pct(c['newly_broken'] / c['n'])}% {_ci(c['newly_broken_ci'])}) |")
    return lines + ["", "A version's budget is enough when doubling it changes robustness by < 0.5 point.", ""]


def _budget_lines(results: Mapping[str, Any]) -> list[str]:
    """The three versions' budgets side by side, and this run's."""
    versions = {**results["versions"], **({} if results["version"] in results["versions"]
                                          else {results["version"]: results["budget"]})}
    lines = ["## Versions and budgets", "",
             "Attacks: PGD on F; AutoAttack-style cascade on F (APGD-CE, APGD-T, Square under L-inf); the DLD "
             "paper's adaptive attack (DLD with encoder-decoders); guide-point soft k-NN (k-NN detectors); selective "
             "and orthogonal PGD (detectors with `surrogate_score`); Square on F + detector (L-inf). This run: "
             f"`{results['version']}`.", "",
             "| setting | " + " | ".join(versions) + " |", "|---|" + "---|" * len(versions)]
    for key in results["budget"]:
        vals = [v[key] for v in versions.values()]
        fmt = [", ".join(f"{x:.3g}" for x in v) if isinstance(v, (list, tuple))
               else f"{v:.3g}" if isinstance(v, float) else str(v) for v in vals]
        lines.append(f"| {key} | " + " | ".join(fmt) + " |")
    return lines + [""]


def _figures(out: Path, results: Mapping[str, Any]) -> None:
    """Robustness against eps per checked detector, and each detector's ROC under each attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, s in results["sanity"].items():
        sweep = s["eps_sweep"]
        ax.plot(sweep["eps"], [100 * r for r in sweep["detector"]], "o-", label=f"F + {name}, {sweep['attack']}")
    if results["sanity"]:
        sweep = next(iter(results["sanity"].values()))["eps_sweep"]
        ax.plot(sweep["eps"], [100 * r for r in sweep["classifier_alone"]], "s--", label="F alone, PGD")
    ax.set(xlabel=f"eps ({results['threat_model']['norm']})", ylabel="robustness (%)",
           title="Robustness against eps (should reach ~0)")
    if ax.lines:                                       # no sanity checks run: an empty figure, no legend
        ax.legend(fontsize=7)
    save_figure(fig, out / "robustness_vs_eps.png", tight_layout=True)
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
    save_figure(fig, out / "roc.png", tight_layout=True)
    _worst_case_vs_fpr(out, results)


def _worst_case_vs_fpr(out: Path, results: Mapping[str, Any]) -> None:
    """worst_case_vs_fpr.png: each detector's worst case (95% CI) at the calibrated threshold and re-judged at each
    SR@FPR operating point (the same kept iterates, not re-attacked there), beside F alone."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, res in results["detectors"].items():
        w = res["all_attacks"]
        points = sorted([(float(f), 1 - r, w["sr_at_fpr_ci"][f]) for f, r in w["sr_at_fpr"].items()]
                        + [(res["clean"]["calibration_fpr"], w["robustness"],
                            (1 - w["robustness_ci"][1], 1 - w["robustness_ci"][0]))])
        x = [100 * p[0] for p in points]
        y = [100 * p[1] for p in points]
        err = [[100 * max(0.0, p[1] - (1 - p[2][1])) for p in points], [100 * max(0.0, 1 - p[2][0] - p[1])
                                                                        for p in points]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"F + {name}")
    broken = results.get("classifier_alone_broken_images")
    alone = 1 - len(broken) / results["n"] if broken is not None else \
        min(results["classifier_alone"]["autoattack_robust_accuracy_after"].values())
    ax.axhline(100 * alone, ls="--", color="grey", label="F alone (PGD and the cascade)")
    ax.set_xscale("symlog", linthresh=1.0)          # linear below 1%: a threshold that flags nothing sits at 0
    ax.set(xlabel="clean false-positive rate on the calibration images (%)",
           ylabel="worst-case robustness (%)", title=f"Against attackers who know the detector (n {results['n']})")
    ax.legend(fontsize=7)
    save_figure(fig, out / "worst_case_vs_fpr.png", tight_layout=True)


