"""The detector leaderboard fills itself from the committed release evaluations (issue 39, item 5)."""

from __future__ import annotations

import json
from pathlib import Path

from latentdefence.detectors.registry import list_detectors
from latentdefence.evaluation.leaderboard import collect, library_detectors, render, update_leaderboard

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"


def test_the_committed_page_is_what_the_release_evaluations_generate() -> None:
    assert update_leaderboard(RESULTS, ROOT / "docs" / "leaderboard.md", check=True), \
        "docs/leaderboard.md is stale: run latentdefence leaderboard (or scripts/update_readme.py)"
    assert (ROOT / "docs" / "leaderboard.png").stat().st_size > 0


def test_every_release_evaluation_is_ranked_with_f_alone_as_its_floor() -> None:
    boards = collect(RESULTS, ROOT / "docs" / "leaderboard.md")
    assert [b.dataset for b in boards] == ["MNIST", "CIFAR-10 (JPEG copy)"]
    for board in boards:
        released = json.loads((ROOT / "docs" / board.source / "results.json").read_text())
        assert {r["detector"] for r in board.rows} == set(released["detectors"])
        values = [r["robustness"] for r in board.rows]
        assert values == sorted(values, reverse=True)
        assert board.classifier_alone == min(released["classifier_alone"]["autoattack_robust_accuracy_after"].values())


def test_a_new_detectors_release_evaluation_appears_with_no_edit_elsewhere(tmp_path: Path) -> None:
    """A user's detector, evaluated and committed as a release, is ranked by name; registered detectors without an
    evaluation are named as such."""
    results = tmp_path / "docs" / "results"
    folder = results / "mine-mnist-adaptive"
    folder.mkdir(parents=True)
    evaluation = json.loads((RESULTS / "dld-mnist-adaptive" / "results.json").read_text())
    mine = json.loads(json.dumps(evaluation["detectors"]["dld"]))
    mine["all_attacks"]["robustness"] = 0.999
    evaluation["detectors"] = {"mine": mine}
    (folder / "results.json").write_text(json.dumps(evaluation))
    (results / "catalog.toml").write_text('[[folder]]\npath = "mine-mnist-adaptive"\nquestion = "release"\n'
                                          'about = "My detector."\ncommand = "latentdefence evaluate-detector mine"\n'
                                          'provenance = "Here."\n')
    page = render(collect(results, tmp_path / "docs" / "leaderboard.md"), library_detectors())
    assert "| 1 | mine | 99.90 [" in page and "[`mine-mnist-adaptive`](results/mine-mnist-adaptive/)" in page
    assert f"without a committed evaluation: {', '.join(library_detectors())}." in page
    assert set(library_detectors()) <= set(list_detectors()) and "dld" in library_detectors()
