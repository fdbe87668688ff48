"""Every Python block of the README runs as written, in order, in one namespace (issue 42): a block may use only
what the blocks before it define. The data is a few hundred MNIST images and the `quick` budget is test-sized;
the code is the README's, character for character."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import latentdefence.data
from latentdefence.data.base import Splits
from latentdefence.evaluation import VERSIONS, Budget

ROOT = Path(__file__).resolve().parents[1]
TINY = Budget(pgd_steps=2, steps=2, restarts=1, n_targets=1, check_every=1, adaptive_steps=1, centroid_steps=1,
              alpha2=(1.0,), autoattack_steps=2, autoattack_targets=1, square_queries=3, n_sanity=3, eps_sweep=(1.0,))


def python_blocks(text: str) -> list[str]:
    """The README's ```python blocks, in order."""
    return re.findall(r"```python\n(.*?)```", text, re.S)


@pytest.mark.slow
def test_every_readme_python_block_runs_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full = latentdefence.data.load_dataset("mnist")
    small = Splits(full.train.head(256), full.test.head(900), provenance=full.provenance)
    monkeypatch.setattr(latentdefence.data, "load_dataset", lambda name, *a, **k: small)
    monkeypatch.setitem(VERSIONS, "quick", TINY)
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    blocks = python_blocks((ROOT / "README.md").read_text())
    assert len(blocks) >= 5, "the README lost its examples"
    scope: dict[str, object] = {"__name__": "readme"}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"README.md python block {number}", "exec"), scope)  # noqa: S102 - our own README
    assert (tmp_path / "runs" / "evaluation" / "report.md").is_file() and (tmp_path / "guard.safetensors").is_file()
    assert scope["out"].label.shape == (100,)                                 # type: ignore[attr-defined]
    assert scope["mine_guarded"].predict(scope["images"]).label.shape == (100,)  # type: ignore[attr-defined]
    assert "detector" in scope["report"].results["detectors"]               # type: ignore[attr-defined]


def test_the_quickstart_example_is_the_readmes() -> None:
    """`examples/guard_your_model.py` mirrors the README's "Guard your own model" block: the same model, taps and calls."""
    example = (ROOT / "examples" / "guard_your_model.py").read_text()
    block = next(b for b in python_blocks((ROOT / "README.md").read_text()) if "as_tapped(" in b)
    for call in ("as_tapped(", 'taps=["2", "5"]', "input_shape=(1, 28, 28)", "nn.Linear(32 * 7 * 7, 10)",
                 "train_classifier(", "GuardedClassifier.load(", "classifier=", "evaluate_detector(", ".calibrate("):
        assert call in block and call in example, call


@pytest.mark.slow
def test_the_quickstart_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`examples/guard_your_model.py` end to end on a few hundred images (its main(), as `python` would run it)."""
    import importlib.util

    full = latentdefence.data.load_dataset("mnist")
    small = Splits(full.train.head(300), full.test.head(1000), provenance=full.provenance)
    spec = importlib.util.spec_from_file_location("guard_your_model", ROOT / "examples" / "guard_your_model.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setattr(example, "load_dataset", lambda name, *a, **k: small)
    monkeypatch.setitem(VERSIONS, "quick", TINY)
    torch.set_num_threads(1)
    example.main(n_train=300, n_eval=20, out=str(tmp_path / "mine.safetensors"))
    assert (tmp_path / "mine.safetensors").is_file()
