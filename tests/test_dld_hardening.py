"""Hardening DLD's encoders against detector-aware attacks (issue 24): the rounds, and the experiment's smoke run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from toy_blobs import blobs, trained_tiny_model

from latentdefence.dld import DeepLatentDefence, EncoderTrainConfig, train_encoder
from latentdefence.dld.hardening import HardeningConfig, harden
from latentdefence.experiments import run_experiment

TAPS = ("layer1", "layer2")
TRAINING = EncoderTrainConfig(epochs=4, batch_size=60, lr=0.01, eps=0.1, steps=2, step_size=0.05, width=4)


def test_harden_fine_tunes_copies_round_by_round_against_the_detector() -> None:
    train, cal = blobs(600, 0), blobs(150, 1)
    model = trained_tiny_model(train)
    encoders = {tap: train_encoder(model, tap, train, 3, TRAINING) for tap in TAPS}
    before = {tap: copy.deepcopy(ed.state_dict()) for tap, ed in encoders.items()}
    config = HardeningConfig(rounds=2, images_per_round=90, attack_steps=3, pgd_steps=3, eps=0.1, epochs=1,
                             batch_size=30, target_fpr=0.05)
    hardened, rounds = harden(model, encoders, train, cal, config, k=5, base=TRAINING)
    for tap, ed in encoders.items():                                   # the given encoders are left alone
        assert all(torch.equal(v, before[tap][k]) for k, v in ed.state_dict().items())
        assert any(not torch.equal(v, before[tap][k]) for k, v in hardened[tap].state_dict().items())
    assert [r.round for r in rounds] == [1, 2] and all(r.images == 90 for r in rounds)
    assert all(0 <= r.evaded_pgd <= 1 and 0 <= r.evaded_attack <= 1 and r.clean_fpr <= 0.05 for r in rounds)
    assert all(r.evaded_attack >= r.evaded_pgd for r in rounds)         # it starts from PGD and keeps the best
    det = DeepLatentDefence(model, TAPS, k=5, latent_dim=3, encoders=hardened).fit(train).calibrate(cal)
    assert det.predict(cal.images).predicted.shape == (150,)


def test_bad_hardening_settings_are_named() -> None:
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        HardeningConfig(rounds=0)
    with pytest.raises(ValueError, match="eps"):
        HardeningConfig(eps=2.0)
    train = blobs(60, 0)
    with pytest.raises(ValueError, match="images_per_round 100 exceeds the 60 index images"):
        harden(trained_tiny_model(train, steps=1), {"layer1": None}, train, train,  # type: ignore[dict-item]
               HardeningConfig(images_per_round=100))


def test_smoke_run_compares_both_detectors_and_sweeps_the_operating_point(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATENTDEFENCE_RUNS", str(tmp_path / "runs"))
    artifact = Path(__file__).resolve().parents[1] / "docs/results/dld-mnist-table1/detector.safetensors"
    out = tmp_path / "out"
    results = run_experiment("dld-mnist-hardening", "smoke", out, overrides=[f"detector_artifact={artifact}"])
    for name in ("dld", "dld_hardened"):
        worst = results["detectors"][name]["all_attacks"]
        assert worst["n"] == 10 and worst["robustness_ci"][0] <= worst["robustness"] <= worst["robustness_ci"][1]
    sweep = results["fpr_sweep"]
    assert set(sweep["detectors"]) == {"dld", "dld_hardened", "mahalanobis"}
    assert all([p["target_fpr"] for p in pts] == [0.02, 0.1] for pts in sweep["detectors"].values())
    assert len(results["hardening_rounds"]) == 1
    saved = json.loads((out / "results.json").read_text())
    assert saved["git_revision"] and saved["settings"]["hardening"]["rounds"] == 1
    assert {"report.md", "worst_case_vs_fpr.png", "detector_hardened.safetensors"} <= {p.name for p in out.iterdir()}
    assert "Hardening rounds" in (out / "report.md").read_text()
    DeepLatentDefence.load(out / "detector_hardened.safetensors")
