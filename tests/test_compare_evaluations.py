"""`compare-evaluations`: one table of detector variants, refused across different evaluations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from latentdefence.cli import app
from latentdefence.evaluation.compare import compare_runs, load_run, write_comparison

COMMITTED = Path(__file__).resolve().parents[1] / "docs" / "results" / "dld-mnist-adaptive"


def _copy(tmp_path: Path, name: str, **changes: object) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    res = json.loads((COMMITTED / "results.json").read_text())
    (folder / "results.json").write_text(json.dumps({**res, **changes}))
    return folder


def test_rows_carry_each_detectors_worst_case_and_the_figure_is_written(tmp_path: Path) -> None:
    a, b = _copy(tmp_path, "a"), _copy(tmp_path, "b")
    run = CliRunner().invoke(app, ["compare-evaluations", f"base={a}", f"again={b}", "--out", str(tmp_path / "c")])
    assert run.exit_code == 0, run.output
    committed = json.loads((COMMITTED / "results.json").read_text())
    saved = json.loads((tmp_path / "c" / "results.json").read_text())
    assert len(saved["rows"]) == 2 * len(committed["detectors"])
    dld = next(r for r in saved["rows"] if r["run"] == "base" and r["detector"] == "dld")
    assert dld["robustness"] == committed["detectors"]["dld"]["all_attacks"]["robustness"]
    assert dld["params"]["k"] == committed["detector_source"]["params"]["k"]
    assert saved["classifier_alone"]["robustness"] == min(
        committed["classifier_alone"]["autoattack_robust_accuracy_after"].values())
    assert "| base | dld |" in (tmp_path / "c" / "report.md").read_text()
    assert (tmp_path / "c" / "worst_case_vs_fpr.png").stat().st_size > 0


@pytest.mark.parametrize("key", ["n", "budget", "classifier_alone"])
def test_runs_of_different_evaluations_are_refused_naming_the_field(tmp_path: Path, key: str) -> None:
    other = _copy(tmp_path, "other", **{key: {"changed": True}})
    with pytest.raises(ValueError, match=f"differ in '{key}'"):
        compare_runs({"base": load_run(COMMITTED), "other": load_run(other)})


def test_bad_input_gets_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_run(tmp_path / "broken")
    with pytest.raises(FileNotFoundError, match="no results.json"):
        load_run(tmp_path / "missing")
    (tmp_path / "partial.json").write_text(json.dumps({"n": 1}))
    with pytest.raises(ValueError, match="missing threat_model"):
        load_run(tmp_path / "partial.json")
    run = CliRunner().invoke(app, ["compare-evaluations", "k30", "--out", str(tmp_path / "x")])
    assert run.exit_code == 2 and "expected LABEL=FOLDER, got k30" in run.output
    assert not (tmp_path / "x").exists()
    twice = CliRunner().invoke(app, ["compare-evaluations", f"a={COMMITTED}", f"a={COMMITTED}",
                                     "--out", str(tmp_path / "y")])
    assert twice.exit_code == 2 and "each run needs its own label" in twice.output


def _with_operating_points(tmp_path: Path, name: str, keys: tuple[str, ...]) -> Path:
    """A copy of the committed run whose re-judged operating points are `keys` (values reused from 1%)."""
    res = json.loads((COMMITTED / "results.json").read_text())
    for det in res["detectors"].values():
        worst = det["all_attacks"]
        worst["sr_at_fpr"] = {key: worst["sr_at_fpr"]["0.01"] for key in keys}
        worst["sr_at_fpr_ci"] = {key: worst["sr_at_fpr_ci"]["0.01"] for key in keys}
    folder = tmp_path / name
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps(res))
    return folder


def test_operating_points_come_from_the_runs_not_from_fixed_keys(tmp_path: Path) -> None:
    a = _with_operating_points(tmp_path, "a", ("0.1", "0.005"))
    b = _with_operating_points(tmp_path, "b", ("0.1", "0.03"))
    comparison = compare_runs({"a": load_run(a), "b": load_run(b)})
    assert comparison["fprs"] == ["0.1"]       # only the point both runs measured
    report = (write_comparison(comparison, tmp_path / "out") / "report.md").read_text()
    assert "| strongest | worst case at 10% FP |" in report and "At 10% FP the kept" in report and "1%" not in report
    c = _with_operating_points(tmp_path, "c", ("0.03",))
    with pytest.raises(ValueError, match="share no re-judged operating point"):
        compare_runs({"a": load_run(a), "c": load_run(c)})


def test_runs_on_different_classifiers_compare_only_when_asked_each_beside_its_own_f(tmp_path: Path) -> None:
    committed = json.loads((COMMITTED / "results.json").read_text())
    alone = committed["classifier_alone"]
    stronger = {**alone, "autoattack_robust_accuracy_after": {k: v + 0.01
                                                              for k, v in alone["autoattack_robust_accuracy_after"].items()}}
    other = _copy(tmp_path, "stronger", classifier_alone=stronger)
    with pytest.raises(ValueError, match="differ in 'classifier_alone'"):
        compare_runs({"base": load_run(COMMITTED), "stronger F": load_run(other)})
    run = CliRunner().invoke(app, ["compare-evaluations", f"base={COMMITTED}", f"stronger F={other}",
                                   "--different-classifiers", "--out", str(tmp_path / "c")])
    assert run.exit_code == 0, run.output
    report = (tmp_path / "c" / "report.md").read_text()
    lowest = min(alone["autoattack_robust_accuracy_after"].values())
    assert f"| F alone (base) | — | — | — | — | {100 * lowest:.2f} " in report
    assert f"| F alone (stronger F) | — | — | — | — | {100 * (lowest + 0.01):.2f} " in report
    assert "each run on its own classifier" in report
    bigger = _copy(tmp_path, "bigger", classifier_alone=stronger, n=committed["n"] + 1)
    with pytest.raises(ValueError, match="differ in 'n'"):   # the rest must still match
        compare_runs({"base": load_run(COMMITTED), "bigger": load_run(bigger)}, same_classifier=False)


def test_a_classifier_comparison_gives_the_readme_one_row_per_other_f(tmp_path: Path) -> None:
    from latentdefence.evaluation.summary import results_table

    committed = json.loads((COMMITTED / "results.json").read_text())
    after = {k: v + 0.02 for k, v in committed["classifier_alone"]["autoattack_robust_accuracy_after"].items()}
    other = _copy(tmp_path, "other", classifier_alone={**committed["classifier_alone"],
                                                        "autoattack_robust_accuracy_after": after})
    results = tmp_path / "docs" / "results"
    comparison = compare_runs({"cpu profile": load_run(COMMITTED), "longer F": load_run(other)}, same_classifier=False)
    write_comparison(comparison, results / "archive" / "dld-mnist-f-variants")
    table = results_table(results)
    dld = committed["detectors"]["dld"]["all_attacks"]["robustness"]
    assert "| DLD on the longer F, eps 0.3" in table and f"| {100 * dld:.2f}% [" in table
    assert f"(F alone under the cascade: {100 * min(after.values()):.2f}%)" in table
    assert "DLD on the cpu profile" not in table          # the reference run's rows come from dld-mnist-adaptive


def test_runs_that_record_broken_images_are_paired_by_mcnemar(tmp_path: Path) -> None:
    base = json.loads((COMMITTED / "results.json").read_text())

    def with_broken(name: str, broken: list[int]) -> Path:
        dets = {k: {**v, "all_attacks": {**v["all_attacks"], "broken_images": broken}} for k, v in base["detectors"].items()}
        return _copy(tmp_path, name, detectors=dets)
    a = with_broken("a", list(range(30)))
    b = with_broken("b", list(range(20, 32)))              # 2 broken only here, 20 only in a
    unrecorded = {k: {**v, "all_attacks": {m: x for m, x in v["all_attacks"].items() if m != "broken_images"}}
                  for k, v in base["detectors"].items()}
    old = _copy(tmp_path, "old", detectors=unrecorded)     # a run from before broken images were recorded
    comparison = compare_runs({"a": load_run(a), "b": load_run(b), "old": load_run(old)})
    dld_b = next(r for r in comparison["rows"] if r["run"] == "b" and r["detector"] == "dld")
    assert dld_b["versus_first"]["broken_only_here"] == 2 and dld_b["versus_first"]["broken_only_in_first"] == 20
    assert dld_b["versus_first"]["mcnemar_p"] < 0.001
    assert not any("versus_first" in r for r in comparison["rows"] if r["run"] in ("a", "old"))
    report = (write_comparison(comparison, tmp_path / "out") / "report.md").read_text()
    assert "McNemar" in report and "| b | dld | 2 | 20 |" in report


def test_defences_on_different_classifiers_are_paired_as_wholes_and_each_against_its_own_f(tmp_path: Path) -> None:
    """The same images (checked), another F: McNemar compares F + detector against F + detector; each run's own
    detector-vs-F-alone test is carried into the report."""
    base = json.loads((COMMITTED / "results.json").read_text())
    dets = {k: {**v, "all_attacks": {**v["all_attacks"], "broken_images": list(range(5))}}
            for k, v in base["detectors"].items()}
    within = [{"first": "dld", "second": "F alone", "robustness_first": 0.99, "robustness_second": 0.9,
               "broken_only_first": 0, "broken_only_second": 45, "mcnemar_p": 5.7e-14}]
    other = _copy(tmp_path, "other", detectors=dets, paired=within,
                  classifier_alone={**base["classifier_alone"], "autoattack_robust_accuracy_after": {"square": 0.9}})
    comparison = compare_runs({"release": load_run(COMMITTED), "other F": load_run(other)}, same_classifier=False)
    dld = next(r for r in comparison["rows"] if r["run"] == "other F" and r["detector"] == "dld")
    released = set(base["detectors"]["dld"]["all_attacks"]["broken_images"])
    assert dld["versus_first"]["broken_only_in_first"] == len(released - set(range(5)))
    report = (write_comparison(comparison, tmp_path / "out") / "report.md").read_text()
    assert "F and detector together" in report and "| other F | dld | F alone | 99.00 / 90.00 | 0 / 45 |" in report
