"""Adversarial sets on disk and the `attack` CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_attacks_fixtures import one_thread, targets_for, tiny_batch, tiny_model  # noqa: F401 (autouse)

from latentdefence.attacks import FGSM, JSMA, load_adversarial_set, save_adversarial_set


def test_round_trip_float_and_uint8(tmp_path: Path) -> None:
    x, y = tiny_batch(8)
    attack = FGSM(eps=0.1)
    result = attack(tiny_model(), x, y)
    path = save_adversarial_set(tmp_path / "fgsm.safetensors", result, y, attack=attack,
                                source_indices=torch.arange(10, 10 + len(y)), model_name="tiny",
                                checkpoint_sha256="abc", dataset="synthetic:test")
    loaded = load_adversarial_set(path)
    assert torch.equal(loaded.images, result.images) and torch.equal(loaded.labels, y)
    assert torch.equal(loaded.success, result.success) and torch.equal(loaded.norms, result.norms)
    assert torch.equal(loaded.predictions, result.predictions)
    assert loaded.source_indices.tolist() == list(range(10, 18))
    assert (loaded.targets == -1).all()
    assert loaded.attack == attack.describe() and loaded.metadata["model"] == "tiny"
    assert loaded.metadata["checkpoint_sha256"] == "abc"
    small = load_adversarial_set(save_adversarial_set(tmp_path / "q.safetensors", result, y, attack=attack,
                                                      uint8=True))
    assert (small.images - result.images).abs().max() <= 0.5 / 255 + 1e-6
    assert small.metadata["quantised"] is True


def test_targets_are_kept(tmp_path: Path) -> None:
    x, y = tiny_batch(4)
    t = targets_for(y)
    attack = JSMA(gamma=0.05)
    path = save_adversarial_set(tmp_path / "j.safetensors", attack(tiny_model(), x, y, t), y, attack=attack, targets=t)
    loaded = load_adversarial_set(path)
    assert torch.equal(loaded.targets, t) and loaded.attack["attack"] == "JSMA" and loaded.attack["gamma"] == 0.05


def test_clear_errors(tmp_path: Path) -> None:
    x, y = tiny_batch(4)
    result = FGSM(eps=0.1)(tiny_model(), x, y)
    with pytest.raises(ValueError, match="labels"):
        save_adversarial_set(tmp_path / "a.safetensors", result, y[:2], attack=FGSM(eps=0.1))
    with pytest.raises(FileNotFoundError):
        load_adversarial_set(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(ValueError, match="safetensors"):
        load_adversarial_set(tmp_path / "junk.safetensors")
    from latentdefence._io import save_tensors

    save_tensors(tmp_path / "other.safetensors", {"a": torch.zeros(1)}, {"x": 1})
    with pytest.raises(ValueError, match="not an adversarial set"):
        load_adversarial_set(tmp_path / "other.safetensors")


def test_cli_attacks_a_checkpoint(tmp_path: Path) -> None:
    typer_testing = pytest.importorskip("typer.testing")
    pytest.importorskip("latentdefence.training")
    from latentdefence.cli.attack import app
    from latentdefence.models import create_model
    from latentdefence.training import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ck", create_model("dld_mnist"), {})
    runner = typer_testing.CliRunner()
    out = tmp_path / "adv.safetensors"
    res = runner.invoke(app, ["run", str(tmp_path / "ck"), "--attack", "pgd", "--steps", "2", "--limit", "6",
                              "--eps", "0.1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert '"robust_accuracy"' in res.output and '"success_rate"' in res.output
    loaded = load_adversarial_set(out)
    assert len(loaded) == 6 and loaded.metadata["model"] == "dld_mnist" and len(loaded.metadata["checkpoint_sha256"]) == 64
    res = runner.invoke(app, ["run", str(tmp_path / "ck"), "--attack", "jsma", "--limit", "2", "--targeted",
                              "--gamma", "0.02", "--out", str(tmp_path / "j.safetensors")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["run", str(tmp_path / "ck"), "--attack", "autoattack", "--steps", "2", "--limit", "4",
                              "--n-target-classes", "2", "--queries", "5", "--out", str(tmp_path / "aa.safetensors")])
    assert res.exit_code == 0, res.output
    attack = load_adversarial_set(tmp_path / "aa.safetensors").attack
    assert attack["attack"] == "AutoAttack" and attack["n_target_classes"] == 2 and attack["square_queries"] == 5
    for args, message in [(["run", str(tmp_path / "nope"), "--out", str(out)], "no such checkpoint"),
                          (["run", str(tmp_path / "ck"), "--attack", "foo", "--out", str(out)], "unknown attack"),
                          (["run", str(tmp_path / "ck"), "--attack", "jsma", "--out", str(out)], "targeted"),
                          (["run", str(tmp_path / "ck"), "--norm", "l7", "--out", str(out)], "norm")]:
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and message in res.output, (args, res.output)
