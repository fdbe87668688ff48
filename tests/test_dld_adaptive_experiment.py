"""`reproduce dld-mnist-adaptive` end to end at smoke size, from dld's stages and from a saved artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latentdefence.data import load_dataset
from latentdefence.detectors import calibrate_threshold
from latentdefence.dld import DeepLatentDefence
from latentdefence.experiments import run_experiment
from latentdefence.data import calibration_split


def test_smoke_run_records_its_detector_and_sets_fpr_thresholds_on_calibration_images(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTDEFENCE_RUNS", str(tmp_path / "runs"))
    torch.set_num_threads(1)
    small = ["baselines=", "attacks.n=6", "attacks.n_masking=4", "attacks.eps_sweep=0.3"]
    res = run_experiment("dld-mnist-adaptive", "smoke", tmp_path / "a", overrides=small)
    assert res["detector_source"]["kind"] == "stages"
    dld = res["detectors"]["dld"]
    assert set(dld["attacks"]) == {"pgd", "autoattack", "adaptive_paper", "guide_points", "selective", "orthogonal",
                                   "square"}
    assert dld["all_attacks"]["robustness"] <= min(row["robustness"] for row in dld["attacks"].values())
    assert dld["paper_attacks"]["attacks"] == ["pgd", "adaptive_paper"]
    assert (tmp_path / "a" / "report.md").is_file() and (tmp_path / "a" / "robustness_vs_eps.png").is_file()
    assert res["built_from_scratch"] and res["fresh_clone_wall_time_s"] == res["total_wall_time_s"] > 0
    assert res["data"] == load_dataset("mnist").provenance   # the source files' digests travel with the numbers
    artifact = next((tmp_path / "runs").rglob("detector-*.safetensors"))
    res2 = run_experiment("dld-mnist-adaptive", "smoke", tmp_path / "b",
                          overrides=[*small, f"detector_artifact={artifact}"])
    source = res2["detector_source"]
    assert not res2["built_from_scratch"] and res2["fresh_clone_wall_time_s"] is None
    assert source["kind"] == "artifact" and source["path"] == str(artifact) and len(source["sha256"]) == 64
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert saved["settings"]["detector_artifact"] == str(artifact)
    assert saved["detectors"]["dld"]["threshold"] == source["recalibrated_threshold"]
    det = DeepLatentDefence.load(artifact)
    cal, _ = calibration_split(load_dataset("mnist").test, saved["settings"]["dld"]["n_calibration"], 0)
    cal_scores = det.nonconformity(cal.images)[1]
    for fpr, row in saved["detectors"]["dld"]["attacks"]["pgd"]["sr_at_fpr"].items():
        assert row["threshold"] == calibrate_threshold(cal_scores, float(fpr))   # calibration images only
    # the CLI on the same artifact, at a test-size version (the paper's adaptive attack needs encoders.safetensors)
    from typer.testing import CliRunner

    from latentdefence.cli import app
    from latentdefence.evaluation import VERSIONS, Budget

    monkeypatch.setitem(VERSIONS, "quick", Budget(pgd_steps=2, steps=2, n_targets=1, check_every=1, adaptive_steps=1,
                                                  centroid_steps=1, alpha2=(1.0,), autoattack_steps=2,
                                                  autoattack_targets=1, square_queries=3, n_sanity=3,
                                                  eps_sweep=(1.0,)))
    run = CliRunner().invoke(app, ["evaluate-detector", str(artifact), "--version", "quick", "--n", "4",
                                   "--out", str(tmp_path / "c"), "--stages", str(tmp_path / "stages")])
    assert run.exit_code == 0, run.output
    cli = json.loads((tmp_path / "c" / "results.json").read_text())
    assert cli["version"] == "quick" and cli["n"] == 4 and "adaptive_paper" in cli["detectors"]["dld"]["attacks"]
    assert "## Sanity checks: dld" in (tmp_path / "c" / "report.md").read_text()
    bad = CliRunner().invoke(app, ["evaluate-detector", str(artifact), "--version", "fast", "--n", "4"])
    assert bad.exit_code == 2 and "unknown version 'fast'" in bad.output
