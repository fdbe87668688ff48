"""`evaluate_detector` on detectors written here only (not in the library): the contract is all it needs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from test_attacks_fixtures import one_thread, synthetic, tiny_model  # noqa: F401 (autouse)
from torch import nn

from latentdefence.data.base import ImageDataset
from latentdefence.detectors import calibrate_threshold
from latentdefence.evaluation import VERSIONS, Budget, ThreatModel, evaluate_detector, evaluate_detectors
from latentdefence.validation import InputValidationError

TINY = Budget(pgd_steps=3, steps=3, restarts=1, n_targets=1, check_every=1, autoattack_steps=3,
              autoattack_targets=2, square_queries=10, n_sanity=8, eps_sweep=(1.0, 4.0), batch_size=32)


@dataclass(frozen=True)
class Verdict:
    predicted: torch.Tensor
    is_adversarial: torch.Tensor
    nonconformity: torch.Tensor


class SoftmaxDetector:
    """Flags inputs whose top softmax probability is low; a user's detector, with a surrogate for attacks."""

    def __init__(self, classifier: nn.Module, flat_surrogate: bool = False) -> None:
        self.classifier = classifier
        self.flat_surrogate = flat_surrogate

    def _score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = self.classifier(images).softmax(1)
        return probs.argmax(1), 1 - probs.amax(1)

    def calibrate(self, images: torch.Tensor, target_fpr: float = 0.05) -> "SoftmaxDetector":
        with torch.no_grad():
            self.calibration_scores_ = self._score(images)[1]
        self.threshold_ = float(self.calibration_scores_.quantile(1 - target_fpr))
        return self

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Verdict:
        predicted, score = self._score(images)
        return Verdict(predicted, score > self.threshold_, score)

    def surrogate_score(self, images: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        if self.flat_surrogate:                       # a detector whose gradients vanish: the check must name it
            return (images * 0).flatten(1).sum(1)
        return 1 - self.classifier(images).softmax(1).gather(1, classes[:, None]).squeeze(1)


def data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x, y = synthetic(24, seed=11)
    cal, _ = synthetic(64, seed=12)
    return x, y, cal


def test_a_user_detector_gets_every_attack_that_applies_and_a_report(tmp_path: Path) -> None:
    x, y, cal = data()
    model = tiny_model()
    dets = {"softmax": SoftmaxDetector(model).calibrate(cal), "flat": SoftmaxDetector(model, True).calibrate(cal)}
    ev = evaluate_detectors(dets, x, y, ThreatModel("linf", 0.1), "tiny", budget=TINY, calibration=cal,
                            budget_check=True)
    res = ev.results["detectors"]["softmax"]
    assert ev.results["seed"] == 0 and ev.results["git_revision"] and "torch" in str(ev.results["environment"])
    assert set(res["attacks"]) == {"pgd", "autoattack", "selective", "orthogonal", "square"}
    assert set(res["skipped"]) == {"adaptive_paper", "guide_points"}
    worst = res["all_attacks"]["robustness"]
    assert worst <= min(row["robustness"] for row in res["attacks"].values()) + 1e-6   # float32 rates
    lo, hi = res["all_attacks"]["robustness_ci"]
    assert lo <= worst <= hi
    for fpr, row in res["attacks"]["pgd"]["sr_at_fpr"].items():       # thresholds from the calibration images only
        assert row["threshold"] == calibrate_threshold(dets["softmax"].calibration_scores_.double(), float(fpr))
    # the kept detector-aware iterates stay in the ball and in [0, 1]
    for attack in ("selective", "orthogonal", "square"):
        adv = ev.images["softmax"][attack]
        assert (adv - x).abs().max() <= 0.1 + 1e-5 and adv.min() >= 0 and adv.max() <= 1
    assert any(w.startswith("flat: its surrogate_score's gradient vanishes") for w in ev.warnings)
    assert not any("vanishes" in w for w in ev.warnings if w.startswith("softmax"))
    check = ev.results["budget_check"]["softmax"]
    assert check["robustness_both"] <= min(check["robustness"], check["robustness_doubled"])
    # paired on the same images: each detector against F alone, the first detector against the second
    alone = set(ev.results["classifier_alone_broken_images"])
    pairs = {(r["first"], r["second"]): r for r in ev.results["paired"]}
    assert set(pairs) == {("softmax", "F alone"), ("flat", "F alone"), ("softmax", "flat")}
    here = set(res["all_attacks"]["broken_images"])
    vs_f = pairs[("softmax", "F alone")]
    assert (vs_f["broken_only_first"], vs_f["broken_only_second"]) == (len(here - alone), len(alone - here))
    assert vs_f["robustness_second"] == pytest.approx(1 - len(alone) / len(y)) and 0 < vs_f["mcnemar_p"] <= 1
    out = ev.write(tmp_path / "eval")
    text = (out / "report.md").read_text()
    assert "## Versions and budgets" in text and "## Budget check" in text and "WARNING: flat" in text
    assert "## Paired on the same images (exact McNemar)" in text
    assert all(v in text for v in VERSIONS)
    assert json.loads((out / "results.json").read_text())["budget"]["steps"] == 3
    assert (out / "robustness_vs_eps.png").is_file() and (out / "roc.png").is_file()
    assert (out / "worst_case_vs_fpr.png").is_file()


def test_l2_threat_model_skips_the_linf_only_attacks() -> None:
    x, y, cal = data()
    det = SoftmaxDetector(tiny_model()).calibrate(cal)
    ev = evaluate_detector(det, x[:8], y[:8], ThreatModel("l2", 1.0), budget=TINY, calibration=cal)
    res = ev.results["detectors"]["detector"]
    assert "square" in res["skipped"] and set(res["attacks"]) == {"pgd", "autoattack", "selective", "orthogonal"}
    assert list(ev.results["classifier_alone"]["autoattack_robust_accuracy_after"]) == ["clean", "apgd-ce", "apgd-t"]
    adv = ev.images["detector"]["selective"]
    assert (adv - x[:8]).flatten(1).norm(dim=1).max() <= 1.0 + 1e-4


def test_a_subset_of_the_detector_aware_attacks_runs_and_the_rest_are_named_as_skipped() -> None:
    x, y, cal = data()
    det = SoftmaxDetector(tiny_model()).calibrate(cal)
    ev = evaluate_detector(det, x[:8], y[:8], ThreatModel(), budget=TINY, calibration=cal, sanity=(),
                           attacks=("selective",))
    res = ev.results["detectors"]["detector"]
    assert set(res["attacks"]) == {"pgd", "autoattack", "selective"}            # F-alone attacks always run
    assert res["skipped"]["orthogonal"] == res["skipped"]["square"] == "not in this run's attacks"
    assert ev.results["sanity"] == {}                                           # sanity=() checks none
    with pytest.raises(ValueError, match="unknown detector-aware attacks \\['nope'\\]"):
        evaluate_detector(det, x, y, ThreatModel(), budget=TINY, calibration=cal, attacks=("nope",))


def test_bad_inputs_are_named() -> None:
    x, y, cal = data()
    det = SoftmaxDetector(tiny_model()).calibrate(cal)
    with pytest.raises(ValueError, match="unknown version 'fast'"):
        evaluate_detector(det, x, y, ThreatModel(), "fast", calibration=cal)
    with pytest.raises(ValueError, match="norm must be 'linf' or 'l2'"):
        ThreatModel("l1", 0.3)
    with pytest.raises(TypeError, match="lacks \\['predict'\\]"):
        evaluate_detector(object.__new__(type("D", (), {"classifier": None})), x, y, ThreatModel(),
                          calibration=cal)
    with pytest.raises(ValueError, match="calibration must be a non-empty batch"):
        evaluate_detector(det, x, y, ThreatModel(), calibration=cal[:0])


BEFORE_ANY_ATTACK = {  # issue 37: each used to fail only after every attack ran, or never
    "calibration ImageDataset": (lambda x, y, cal: {"calibration": ImageDataset(cal, torch.zeros(len(cal)).long())},
                                 "calibration must be a tensor of clean images (M, C, H, W), got ImageDataset "
                                 "(pass its .images)"),
    "calibration 0-255": (lambda x, y, cal: {"calibration": cal * 255}, "calibration must lie in [0, 1]"),
    "fprs 5%": (lambda x, y, cal: {"fprs": (5.0,)}, "fprs must be in (0, 1)"),
    "fprs nan": (lambda x, y, cal: {"fprs": (0.05, float("nan"))}, "fprs must be finite"),
    "fprs a number": (lambda x, y, cal: {"fprs": 0.05}, "fprs must be a non-empty sequence"),
    "fprs empty": (lambda x, y, cal: {"fprs": ()}, "fprs must be a non-empty sequence"),
    "target_fpr 1": (lambda x, y, cal: {"target_fpr": 1.0}, "target_fpr must be in [0, 1)"),
    "labels int32": (lambda x, y, cal: {"labels": y.int()}, "labels must be"),
    "clean labels short": (lambda x, y, cal: {"clean": (x, y[:3])}, "clean labels must be"),
    "images NaN": (lambda x, y, cal: {"images": x.clone().fill_(float("nan"))}, "images contain NaN"),
    "sanity unknown": (lambda x, y, cal: {"sanity": ("dld",)}, "sanity names ['dld'], which are not among"),
}


@pytest.mark.parametrize("case", sorted(BEFORE_ANY_ATTACK))
def test_every_argument_is_checked_before_the_first_attack(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from latentdefence.evaluation import detector_eval

    x, y, cal = data()
    det = SoftmaxDetector(tiny_model()).calibrate(cal)
    monkeypatch.setattr(detector_eval, "_attack_all", lambda *a, **k: pytest.fail("an attack ran"))
    change, expected = BEFORE_ANY_ATTACK[case]
    args = {"images": x, "labels": y, "calibration": cal, **change(x, y, cal)}
    images, labels = args.pop("images"), args.pop("labels")
    with pytest.raises(InputValidationError) as info:
        evaluate_detectors({"mine": det}, images, labels, ThreatModel(), budget=TINY, **args)
    assert str(info.value).startswith(expected), str(info.value)


def test_operating_points_the_calibration_cannot_keep_are_warned_about() -> None:
    x, y, cal = data()
    det = SoftmaxDetector(tiny_model()).calibrate(cal)
    ev = evaluate_detector(det, x[:4], y[:4], ThreatModel(), budget=TINY, calibration=cal, sanity=(),
                           fprs=(0.01, 0.05), attacks=("selective",))
    assert any(w.startswith("fprs 0.01 cannot be kept with 64 calibration image(s)") for w in ev.results["warnings"])
    assert not any(w.startswith("fprs 0.05") for w in ev.results["warnings"])


def test_versions_grow_and_the_budget_check_doubles_every_attack() -> None:
    q, s, t = VERSIONS["quick"], VERSIONS["standard"], VERSIONS["thorough"]
    assert q.steps < s.steps < t.steps and q.restarts <= s.restarts < t.restarts and s.n_targets < t.n_targets
    assert (s.autoattack_steps, s.autoattack_targets) == (100, 9)          # AutoAttack's standard budget on F
    d = s.doubled()
    assert (d.steps, d.restarts, d.pgd_steps, d.square_queries) == (2 * s.steps, 2 * s.restarts, 2 * s.pgd_steps,
                                                                     2 * s.square_queries)


def test_a_killed_evaluation_resumes_from_its_finished_stages_with_the_same_results(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """Issue 40: each finished attack stage is kept with the random state after it; a run killed in its third
    detector-aware attack, run again, loads the stages before it and ends with the uninterrupted run's results."""
    from latentdefence.evaluation import detector_eval

    model, (x, y, cal) = tiny_model(), data()
    det = SoftmaxDetector(model).calibrate(cal)
    kwargs = dict(calibration=cal, budget=TINY, seed=3, sanity=())
    whole = evaluate_detector(det, x, y, ThreatModel("linf", 0.3), **kwargs).results
    real, calls = detector_eval._detector_aware, []

    def killed(kind: str, *args, **kw):  # type: ignore[no-untyped-def]
        calls.append(kind)
        if len(calls) == 3:
            raise KeyboardInterrupt("the machine was taken back")
        return real(kind, *args, **kw)
    monkeypatch.setattr(detector_eval, "_detector_aware", killed)
    with pytest.raises(KeyboardInterrupt):
        evaluate_detector(det, x, y, ThreatModel("linf", 0.3), resume=tmp_path / "kept", **kwargs)
    monkeypatch.setattr(detector_eval, "_detector_aware", real)
    again = evaluate_detector(det, x, y, ThreatModel("linf", 0.3), resume=tmp_path / "kept", **kwargs).results
    assert again["resumed"] == ["pgd", "autoattack", *[f"{kind}--detector" for kind in calls[:2]]]
    same = [json.dumps(run[part], sort_keys=True) for run in (again, whole) for part in ("detectors", "classifier_alone")]
    assert same[:2] == same[2:]             # as JSON: an attack that broke nothing has NaN rates, and NaN != NaN
    from latentdefence.evaluation.detector_report import report
    assert "Resumed: the attack stages pgd, autoattack" in report(again) and "Resumed" not in report(whole)
    other = evaluate_detector(SoftmaxDetector(model).calibrate(cal, target_fpr=0.2), x, y, ThreatModel("linf", 0.3),
                              resume=tmp_path / "kept", **kwargs).results
    assert other["resumed"] == []                     # another detector under the same name: nothing reused
