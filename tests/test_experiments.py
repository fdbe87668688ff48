"""Every paper experiment has a name, a pipeline and profiles; non-MNIST pipelines run on published-format fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from latentdefence.cli import app
from latentdefence.experiments import EXPERIMENTS, PROFILES, get_experiment, list_pipelines, run_experiment
from latentdefence.experiments.dld_config import dld_config
from published_formats import write_svhn_dir


def test_every_table_and_figure_has_an_experiment() -> None:
    names = set(EXPERIMENTS)
    for ds in ("mnist", "svhn"):
        assert {f"dld-{ds}-table1", f"dld-{ds}-table2", f"dld-{ds}-fig3"} <= names
    assert {f"lad-mnist-table{i}" for i in (2, 3, 4)} | {f"lad-mnist-fig{i}" for i in (3, 4, 5, 6, 7)} <= names
    assert {"lad-svhn-table5", "lad-svhn-table6", "lad-svhn-table7"} <= names
    assert {"lad-celeba-table8", "lad-celeba-table9", "lad-celeba-table10"} <= names
    assert {"dld-mnist-ablation", "dld-mnist-hardening", "lad-mnist-paper-numbers"} <= names
    assert all(e.pipeline in list_pipelines() and e.needs_data_dir == (e.dataset != "mnist")
               for e in EXPERIMENTS.values())


def test_unknown_names_profiles_and_missing_data_dirs_are_explained(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LATENTDEFENCE_DATA_DIR", raising=False)
    with pytest.raises(KeyError, match="unknown experiment 'dld-cifar'"):
        get_experiment("dld-cifar")
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        run_experiment("dld-mnist-table1", "huge", tmp_path)
    with pytest.raises(ValueError, match="needs --data-dir"):
        run_experiment("dld-svhn-table1", "smoke", tmp_path)
    with pytest.raises(ValueError, match="demo profile"):
        run_experiment("lad-mnist-table2", "demo", tmp_path)
    res = CliRunner().invoke(app, ["reproduce", "lad-svhn-table5", "--profile", "smoke"])
    assert res.exit_code == 2 and "needs --data-dir" in res.output


def test_demo_profile_is_a_reduced_cpu_profile() -> None:
    demo, cpu = dld_config("demo"), dld_config("cpu")
    assert "demo" in PROFILES and demo.profile == "demo"
    assert demo.attacks.pgd_steps < cpu.attacks.pgd_steps and demo.classifier.max_train < cpu.classifier.max_train
    assert demo.n_calibration == 750 and demo.target_fpr == 0.02
    # a checkout ships the cpu profile's PGD-trained classifier; the demo spends its time on adversarial encoders
    assert demo.classifier_checkpoint is not None and demo.classifier_checkpoint.endswith("classifier")
    assert demo.encoder.adversarial and demo.encoder.steps >= 3


@pytest.mark.slow
def test_dld_svhn_smoke_runs_on_published_format_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTDEFENCE_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("LATENTDEFENCE_CACHE", str(tmp_path / "cache"))
    data = write_svhn_dir(tmp_path / "svhn", n_train=400, n_test=200)
    res = CliRunner().invoke(app, ["reproduce", "dld-svhn-table1", "--profile", "smoke", "--data-dir", str(data),
                                   "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["settings"]["dataset"] == "svhn" and results["settings"]["latent_dim"] == 100
    assert [r["layers"] for r in results["table2"]] == [["layer1"], ["layer1", "layer2"]]
    assert set(results["table1"]) == {"fgsm", "pgd", "cw", "adaptive"}
    assert "# DLD on SVHN" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_lad_celeba_smoke_runs_on_published_format_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from latentdefence.experiments.lad import run_lad
    from latentdefence.experiments.lad_config import lad_config
    from published_formats import celeba_files, write_celeba

    monkeypatch.setenv("LATENTDEFENCE_CACHE", str(tmp_path / "cache"))
    data = write_celeba(tmp_path / "celeba", celeba_files(100, 80))
    config = lad_config("smoke", "celeba", data_dir=str(data), cache_root=str(tmp_path / "runs"),
                        loader_kwargs={"image_size": 32})
    results = run_lad(config, tmp_path / "out")
    assert set(results["table2"]) == {"fgsm", "pgd"}  # the paper's CelebA attacks (Table VIII)
    assert 0.0 <= results["table4"]["original"] <= 1.0 and results["dataset_sizes"]["train"] == 100
    on_disk = json.loads((tmp_path / "out" / "results.json").read_text())
    assert on_disk["settings"]["dataset"] == "celeba" and on_disk["generator"]["test_mse"] >= 0.0


@pytest.mark.slow
def test_lad_svhn_smoke_runs_on_published_format_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from latentdefence.experiments.lad import run_lad
    from latentdefence.experiments.lad_config import lad_config

    monkeypatch.setenv("LATENTDEFENCE_CACHE", str(tmp_path / "cache"))
    data = write_svhn_dir(tmp_path / "svhn", n_train=200, n_test=120)
    # JSMA's pair search over 3,072 SVHN features takes minutes even at smoke size; it is tested on its own.
    config = lad_config("smoke", "svhn", data_dir=str(data), cache_root=str(tmp_path / "runs"), attacks=("fgsm", "pgd"))
    results = run_lad(config, tmp_path / "out")
    assert set(results["table2"]) == set(results["table3"]) == {"fgsm", "pgd"}
    assert all(0.0 <= row["original"] <= 1.0 and row["n"] > 0 for row in results["table2"].values())
    assert json.loads((tmp_path / "out" / "results.json").read_text())["settings"]["dataset"] == "svhn"
    assert (tmp_path / "out" / "report.md").is_file()
