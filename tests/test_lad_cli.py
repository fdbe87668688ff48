"""`latentdefence lad` commands chained on embedded MNIST with an untrained LeNet (wiring, files, exit codes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from latentdefence.cli.lad import app
from latentdefence.data import DatasetFileError, load_dataset
from latentdefence.models import create_model
from latentdefence.training import save_checkpoint

pytestmark = pytest.mark.slow


def run(*args: str) -> dict:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_commands_chain(tmp_path: Path) -> None:
    try:
        load_dataset("mnist")
    except DatasetFileError as err:
        pytest.skip(f"embedded MNIST unavailable: {err}")
    clf = str(tmp_path / "lenet")
    save_checkpoint(clf, create_model("lenet5"))
    gen, bnd, sset = (str(tmp_path / n) for n in ("g.safetensors", "b.safetensors", "s.safetensors"))
    assert run("train-generator", "--classifier", clf, "--out", gen, "--epochs", "1", "--limit", "64",
               "--width", "0.25")["test_mse"] > 0
    assert run("boundary", "--classifier", clf, "--out", bnd, "--per-class", "2", "--epochs", "5",
               "--strategy", "one_vs_rest")["fit_images"] == 20
    made = run("generate", "--classifier", clf, "--generator", gen, "--boundaries", bnd, "--out", sset,
               "--eps", "0.1", "--eps", "20", "--per-class", "1")
    assert made["n"] == 2 * 10 * 9 and made["eps"] == pytest.approx([0.1, 20.0])
    tuned = run("finetune", "--classifier", clf, "--generated", sset, "--eps", "20", "--epochs", "1",
                "--out", str(tmp_path / "ft"))
    assert tuned["generated_images"] == 90
    clean = run("evaluate", str(tmp_path / "ft"), "--exclude", bnd, "--exclude", sset)
    assert clean["n"] == 10_000 - 20 - 10
    assert run("evaluate", clf, "--generated", sset)["n"] == 180


def test_errors_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such file" in result.output
