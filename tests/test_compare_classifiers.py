"""`latentdefence evaluate A B ...`: classifiers on the same images under the same seeded attack, paired (McNemar)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from scipy.stats import binomtest
from typer.testing import CliRunner

from latentdefence.cli import app
from latentdefence.evaluation.classifiers import compare_classifiers, mcnemar_p_value
from latentdefence.models import create_model
from latentdefence.training import save_checkpoint


@pytest.mark.parametrize(("only_first", "only_second"), [(0, 0), (5, 0), (42, 42), (56, 18), (3, 11)])
def test_mcnemar_matches_an_exact_two_sided_binomial_test(only_first: int, only_second: int) -> None:
    n = only_first + only_second
    expected = binomtest(only_first, n, 0.5).pvalue if n else 1.0
    assert mcnemar_p_value(only_first, only_second) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="discordant"):
        mcnemar_p_value(-1, 3)


def test_the_same_model_twice_is_paired_exactly_and_a_different_one_is_counted() -> None:
    """A fresh seeded attack per model: the same weights give identical outcomes (0 / 0 discordant, p 1)."""
    from latentdefence.attacks import PGD

    torch.manual_seed(0)
    a, b = create_model("dld_mnist"), create_model("dld_mnist")
    x, y = torch.rand(24, 1, 28, 28), torch.randint(0, 10, (24,))
    out = compare_classifiers({"a": a, "a again": a, "b": b}, x, y,
                              lambda: PGD(0.05, steps=3, generator=torch.Generator().manual_seed(0)))
    again, other = out["rows"][1], out["rows"][2]
    assert out["reference"] == "a" and "versus_first" not in out["rows"][0]
    assert again["versus_first"] == {"robust_only_here": 0, "robust_only_in_first": 0, "mcnemar_p": 1.0}
    assert again["robust_accuracy"] == out["rows"][0]["robust_accuracy"]
    paired = other["versus_first"]
    assert paired["robust_only_here"] - paired["robust_only_in_first"] == round(
        24 * (other["robust_accuracy"] - out["rows"][0]["robust_accuracy"]))
    lo, hi = other["robust_accuracy_ci"]
    assert lo <= other["robust_accuracy"] <= hi
    with pytest.raises(ValueError, match="at least one"):
        compare_classifiers({}, x, y, lambda: PGD(0.05, steps=1))


def test_the_cli_writes_results_and_a_report(tmp_path: Path) -> None:
    torch.manual_seed(0)
    paths = [save_checkpoint(tmp_path / name, create_model("dld_mnist")) for name in ("f1", "f2")]
    out = tmp_path / "cmp"
    result = CliRunner().invoke(app, ["evaluate", *(str(p) for p in paths), "--limit", "30", "--steps", "2",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "results.json").read_text())
    assert saved["n"] == 30 and len(saved["rows"]) == 2 and saved["settings"]["seed"] == 0
    assert "McNemar p" in (out / "report.md").read_text()
    bad = CliRunner().invoke(app, ["evaluate", str(paths[0]), "--steps", "0"])
    assert bad.exit_code != 0 and "--steps" in bad.output
