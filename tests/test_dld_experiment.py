"""The smoke profile of the DLD experiment runs end to end and writes the documented results schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from latentdefence.experiments.dld import ATTACKS, dld_config, run_dld


def test_smoke_run_writes_results_report_and_figures(tmp_path: Path) -> None:
    out = tmp_path / "out"
    run_dld(dld_config("smoke"), out, cache_root=tmp_path / "cache")
    results = json.loads((out / "results.json").read_text())
    assert 0.0 <= results["fpr"] <= 1.0
    for name in ATTACKS:
        row = results["table1"][name]
        assert {"base_accuracy", "robustness", "roc_auc", "true_positive_rate", "n"} <= set(row)
        assert row["base_accuracy"] <= row["robustness"] <= 1.0
    assert [r["layers"] for r in results["table2"]] == [["layer1"], ["layer1", "layer2"], ["layer1", "layer2", "layer3"]]
    assert set(results["fig3"]["robustness"]) == {"0", "15"}
    assert {"settings", "seed", "git_revision", "environment", "wall_time_s"} <= set(results)
    assert results["settings"]["profile"] == "smoke" and results["dataset_sizes"]["calibration"] == 100
    assert "| adaptive |" in (out / "report.md").read_text()
    assert all((out / f).stat().st_size > 0 for f in ("roc.png", "fig3_alpha2.png", "latent_pca.png"))


def test_profiles_are_named_and_svhn_uses_its_own_settings() -> None:
    svhn = dld_config("paper", "svhn", data_dir="/data/svhn")
    assert svhn.latent_dim == 100 and svhn.taps == ("layer1", "layer2") and svhn.attacks.eps == 0.05
    assert dld_config("paper").attacks.pgd_restarts == 5 and dld_config("paper").attacks.cw_steps == 2000
    with pytest.raises(ValueError, match="profile"):
        dld_config("huge")
