"""The budget check across runs (`compare-evaluations --different-budgets`): one evaluation at a cheaper and a
larger budget, paired on the images both attacked, refused when the runs are not one evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from latentdefence.cli import app
from latentdefence.evaluation.budgets import compare_budgets
from latentdefence.evaluation.threat import VERSIONS
from latentdefence.evaluation.classifiers import mcnemar_p_value


def _run(version: str, n: int, dld: list[int], alone: list[int], threshold: float = 7.0) -> dict[str, Any]:
    """A results.json of `evaluate_detectors` reduced to what the budget check reads."""
    budget = {**VERSIONS[version].__dict__}
    return {"threat_model": {"norm": "linf", "eps": 0.3}, "seed": 0, "n": n, "version": version, "budget": budget,
            "dataset_sizes": {"train": 100, "calibration": 20, "clean_eval": 50, "attacked": n},
            "detectors": {"dld": {"threshold": threshold, "all_attacks": {"broken_images": dld}}},
            "classifier_alone_broken_images": alone, "git_revision": "abc1234",
            "classifier_alone": {"autoattack_robust_accuracy_after": {"apgd-ce": 1 - len(alone) / n}, "n": n}}


def test_pairs_the_runs_on_the_images_both_attacked() -> None:
    quick = _run("quick", 10, dld=[1, 8], alone=[1, 2, 8, 9])          # images 8, 9: not attacked by standard
    standard = _run("standard", 5, dld=[1, 3, 4], alone=[1, 2, 3])
    found = compare_budgets({"quick": quick, "standard": standard})
    assert found["n"] == 5
    rows = {(r["run"], r["detector"]): r for r in found["rows"]}
    assert rows["quick", "dld"]["broken_images"] == [1] and rows["quick", "dld"]["robustness"] == 0.8
    lo, hi = rows["quick", "dld"]["robustness_ci"]
    assert lo < 0.8 < hi
    assert rows["standard", "dld"]["versus_first"] == {"broken_only_here": 2, "broken_only_in_first": 0,
                                                       "mcnemar_p": mcnemar_p_value(2, 0)}
    assert rows["standard", "F alone"]["versus_first"]["broken_only_here"] == 1


@pytest.mark.parametrize("change, said", [
    (lambda r: r["detectors"]["dld"].update(threshold=6.0), "dld's threshold"),
    (lambda r: r.update(seed=1), "seed"),
    (lambda r: r["dataset_sizes"].update(calibration=30), "dataset_sizes.calibration"),
    (lambda r: r.update(budget=VERSIONS["quick"].__dict__), "the same budget"),
    (lambda r: r["detectors"]["dld"]["all_attacks"].pop("broken_images"), "did not record which images dld lost"),
])
def test_refuses_runs_that_are_not_one_evaluation_at_two_budgets(change, said: str) -> None:  # type: ignore[no-untyped-def]
    standard = _run("standard", 5, dld=[1], alone=[1])
    change(standard)
    with pytest.raises(ValueError, match=said):
        compare_budgets({"quick": _run("quick", 10, dld=[1], alone=[1]), "standard": standard})


def test_the_cli_writes_the_report_and_figure(tmp_path: Path) -> None:
    for label, run in (("quick", _run("quick", 10, [1], [1, 2])), ("standard", _run("standard", 5, [1, 3], [1, 2]))):
        (tmp_path / label).mkdir()
        (tmp_path / label / "results.json").write_text(json.dumps(run))
    result = CliRunner().invoke(app, ["compare-evaluations", f"quick={tmp_path / 'quick'}",
                                      f"standard={tmp_path / 'standard'}", "--different-budgets",
                                      "--out", str(tmp_path / "check")])
    assert result.exit_code == 0, result.output
    assert "| dld | 80.0 [" in result.output and "| 1 / 0 |" in result.output
    assert (tmp_path / "check" / "robustness_by_budget.png").stat().st_size > 0
    assert json.loads((tmp_path / "check" / "results.json").read_text())["n"] == 5
