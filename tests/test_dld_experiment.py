"""The smoke profile of the DLD experiment runs end to end and writes the documented results schema."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from latentdefence._io import save_tensors
from latentdefence.cli.dld import app
from latentdefence.dld import DeepLatentDefence, load_encoders
from latentdefence.experiments.dld import run_dld, strongest_alpha2
from latentdefence.experiments.dld_config import ATTACKS, SIX_TAPS, dld_config
from latentdefence.experiments.dld_stages import build_dld
from latentdefence.experiments.dld_ablation import ablation_config, run_dld_ablation


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dld")
    run_dld(dld_config("smoke"), root / "out", cache_root=root / "cache")
    return root


def test_smoke_run_writes_results_report_and_figures(smoke_run: Path) -> None:
    out = smoke_run / "out"
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["fpr"] <= 1.0
    for name in ATTACKS:
        row = results["table1"][name]
        assert {"base_accuracy", "robustness", "roc_auc", "true_positive_rate", "n"} <= set(row)
        assert row["base_accuracy"] <= row["robustness"] <= 1.0
        assert set(row["roc_auc_per_layer"]) == {"layer1", "layer2", "layer3"}
        assert 0.0 <= row["roc_auc_all_adversarial"] <= 1.0
        lo, hi = row["roc_auc_ci"]
        assert math.isnan(row["roc_auc"]) or lo <= row["roc_auc"] <= hi
        assert {"roc_auc_correct_negatives", "tpr_at_paper_fpr", "or_rule"} <= set(row)
    for tap, d in results["diagnostics"].items():
        assert set(d["inserted_accuracy"]) == {"clean", "fgsm", "pgd"} and 0.0 <= d["knn_accuracy_clean"] <= 1.0
        assert sum(d["agreement"]["pgd"].values()) == results["table1"]["pgd"]["n"]
    assert set(results["encoder_training"]) == {"layer1", "layer2", "layer3"}
    assert [r["layers"] for r in results["table2"]] == [["layer1"], ["layer1", "layer2"], ["layer1", "layer2", "layer3"]]
    assert set(results["fig3"]["robustness"]) == {"0", "1"}
    assert results["fig3"]["strongest_alpha2"] in results["fig3"]["tied_alpha2"]
    assert results["cw_fool_rate"] == pytest.approx(1 - results["table1"]["cw"]["base_accuracy"])
    assert {"settings", "seed", "git_revision", "environment", "wall_time_s"} <= set(results)
    assert results["settings"]["profile"] == "smoke" and results["dataset_sizes"]["calibration"] == 100
    assert "| adaptive |" in (out / "report.md").read_text()
    assert all((out / f).stat().st_size > 0 for f in ("roc.png", "fig3_alpha2.png", "latent_pca.png",
                                                      "nonconformity_hist.png"))
    assert "## Encoder diagnostics" in (out / "report.md").read_text()
    shipped = DeepLatentDefence.load(out / "detector.safetensors")
    assert shipped.threshold_ == results["threshold"] and shipped.metadata_["profile"] == "smoke"
    assert set(load_encoders(str(out / "encoders.safetensors"))) == {"layer1", "layer2", "layer3"}


def test_fresh_clone_wall_time_is_recorded_only_for_a_run_that_built_every_stage(smoke_run: Path) -> None:
    first = json.loads((smoke_run / "out" / "results.json").read_text())
    assert first["built_from_scratch"] and first["fresh_clone_wall_time_s"] == first["total_wall_time_s"]
    assert first["total_wall_time_s"] >= sum(first["wall_time_s"].values()) - 1.0
    again = run_dld(dld_config("smoke"), smoke_run / "again", cache_root=smoke_run / "cache")
    assert not again["built_from_scratch"] and again["fresh_clone_wall_time_s"] is None
    assert "not a fresh-clone time" in (smoke_run / "again" / "report.md").read_text()


def test_a_trained_classifier_and_its_checkpoint_copy_share_every_later_stage(smoke_run: Path) -> None:
    (trained,) = (smoke_run / "cache").glob("dld-classifier-*")
    stages = sorted(p.name for p in (smoke_run / "cache").iterdir())
    run_dld(replace(dld_config("smoke"), classifier_checkpoint=str(trained / "final")), smoke_run / "copy",
            cache_root=smoke_run / "cache")
    assert sorted(p.name for p in (smoke_run / "cache").iterdir()) == stages


def test_detector_variants_of_one_encoder_stage_keep_their_own_artifacts(smoke_run: Path) -> None:
    default = build_dld(dld_config("smoke"), smoke_run / "cache").encoders_dir
    variant = build_dld(replace(dld_config("smoke"), k=3), smoke_run / "cache")
    assert variant.encoders_dir == default          # k changes the index vote, not the encoders
    saved = {DeepLatentDefence.load(p).k for p in default.glob("detector-*.safetensors")}
    assert saved >= {dld_config("smoke").k, 3}


def test_smoke_ablation_reports_one_row_per_change_against_the_same_attack_sets(smoke_run: Path) -> None:
    config = ablation_config("smoke")
    results = run_dld_ablation(config, smoke_run / "ablation", cache_root=smoke_run / "cache")
    assert [r["name"] for r in results["rows"]] == ["legacy pairing", "reference"]
    legacy, ref = results["rows"]
    assert legacy["changes"] == ["encoder.pairing=legacy"] and ref["changes"] == []
    for row in results["rows"]:
        assert set(row["attacks"]) == {"fgsm", "pgd"} and row["encoder_build_s"] is not None
        assert set(row["attacks"]["pgd"]["roc_auc_per_layer"]) == {"layer1", "layer2", "layer3"}
    # same F and attack sets: base accuracy cannot depend on the row
    assert legacy["attacks"]["pgd"]["base_accuracy"] == ref["attacks"]["pgd"]["base_accuracy"]
    assert json.loads((smoke_run / "ablation" / "results.json").read_text())["rows"][1]["name"] == "reference"
    report = (smoke_run / "ablation" / "report.md").read_text()
    assert "| legacy pairing | " in report and "[" in report.split("| legacy pairing | ")[1].split("|")[0]
    with pytest.raises(ValueError, match="unknown profile .paper. for dld-ablation; choose one of smoke, cpu"):
        ablation_config("paper")


def test_strongest_alpha2_is_numeric_with_ties_reported() -> None:
    assert strongest_alpha2({"0": 0.9, "15": 0.8, "5": 0.8, "30": 0.85}) == ("5", ["5", "15"])
    assert strongest_alpha2({"0.5": 0.7, "16": 0.9}) == ("0.5", ["0.5"])


def test_profiles_are_named_and_svhn_uses_its_own_settings() -> None:
    svhn = dld_config("paper", "svhn", data_dir="/data/svhn")
    assert svhn.latent_dim == 100 and svhn.taps == ("layer1", "layer2") and svhn.attacks.eps == 0.05
    assert dld_config("paper").attacks.pgd_restarts == 5 and dld_config("paper").attacks.cw_steps == 2000
    with pytest.raises(ValueError, match="profile"):
        dld_config("huge")


def test_the_cpu_profile_taps_around_each_pool_and_table2_pairs_paper_values_with_the_paper_taps(
        smoke_run: Path, tmp_path: Path) -> None:
    assert dld_config("cpu").taps == SIX_TAPS and dld_config("cpu", "svhn", data_dir="/d").taps == ("layer1", "layer2")
    run_dld(replace(dld_config("smoke"), taps=SIX_TAPS), tmp_path / "six", cache_root=smoke_run / "cache")
    table2 = (tmp_path / "six" / "report.md").read_text().split("## Table II")[1].split("## Fig. 3")[0]
    rows = [line.split("|") for line in table2.splitlines() if line.startswith("| layer") and "TP increase" not in line]
    assert [r[1].split(",")[-1].strip() for r in rows] == list(SIX_TAPS)
    assert [r[2].split("/")[1].strip() for r in rows] == ["--", "76.40", "--", "82.12", "--", "84.37"]


def test_cli_calibrates_and_detects_with_the_saved_artifact(smoke_run: Path) -> None:
    artifact = next((smoke_run / "cache").glob("dld-encoders-*/detector-*.safetensors"))
    runner = CliRunner()
    res = runner.invoke(app, ["calibrate", str(artifact), "--n-calibration", "100", "--target-fpr", "0.05"])
    assert res.exit_code == 0, res.output
    assert res.output.startswith("threshold")
    images = smoke_run / "x.safetensors"
    save_tensors(images, {"images": torch.rand(7, 1, 28, 28)})
    res = runner.invoke(app, ["detect", str(artifact), str(images)])
    assert res.exit_code == 0 and '"n": 7' in res.output
    res = runner.invoke(app, ["detect", str(artifact), str(smoke_run / "missing.safetensors")])
    assert res.exit_code == 2 and "no such file" in res.output


def test_a_cw_training_set_is_crafted_once_per_f_and_feeds_the_encoders(smoke_run: Path) -> None:
    config = replace(dld_config("smoke"), encoder=replace(dld_config("smoke").encoder, precomputed=("pgd", "fgsm", "cw")))
    build = build_dld(config, smoke_run / "cache")
    sets = sorted((smoke_run / "cache").glob("dld-train-adversarial-*"))
    cw = [p for p in sets if json.loads((p / "COMPLETE.json").read_text())["settings"]["attack"] == "cw"]
    assert len(cw) == 1 and set(build.encoders) == set(config.taps)
    settings = json.loads((cw[0] / "COMPLETE.json").read_text())["settings"]
    assert settings["initial_const"] == 10.0 and settings["steps"] == config.encoder.precomputed_cw_steps
    with pytest.raises(ValueError, match="detector_aware"):
        build_dld(replace(config, encoder=replace(config.encoder, precomputed=("detector_aware",))), smoke_run / "cache")


def test_cli_compares_detectors_on_the_same_attacked_images(smoke_run: Path) -> None:
    artifact = str(next((smoke_run / "cache").glob("dld-encoders-*/detector-*.safetensors")))
    runner = CliRunner()
    out = smoke_run / "compare"
    res = runner.invoke(app, ["compare", f"a={artifact}", f"b={artifact}", "--n", "200", "--out", str(out)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["n"] == 200 and results["rows"][1]["versus_first"]["difference"] == 0
    assert "DeLong" in res.output
    res = runner.invoke(app, ["compare", artifact])
    assert res.exit_code == 2 and "NAME=PATH" in res.output
    res = runner.invoke(app, ["compare", f"a={artifact}", "--attack", "cw"])
    assert res.exit_code == 2 and "fgsm or pgd" in res.output
