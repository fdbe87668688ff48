"""The cpu-profile detector committed beside its results loads and guards without any training (issue 17)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latentdefence.data import load_dataset
from latentdefence.dld import DeepLatentDefence, load_encoders

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "dld-mnist-table1"


@pytest.fixture(scope="module")
def shipped() -> DeepLatentDefence:
    return DeepLatentDefence.load(RESULTS / "detector.safetensors")


def test_the_committed_artifact_is_the_run_its_results_describe(shipped: DeepLatentDefence) -> None:
    results = json.loads((RESULTS / "results.json").read_text())
    assert shipped.threshold_ == results["threshold"] and shipped.pruned_ == results["pruned"]
    assert shipped.metadata_["profile"] == "cpu" and shipped.metadata_["dataset"] == "mnist"
    assert set(load_encoders(str(RESULTS / "encoders.safetensors"))) == set(shipped.taps)


def test_the_committed_artifact_classifies_clean_digits_and_flags_few(shipped: DeepLatentDefence) -> None:
    test = load_dataset("mnist").test.head(200)
    verdict = shipped.predict(test.images)
    assert float((verdict.predicted == test.labels).float().mean()) >= 0.95
    assert int(verdict.is_adversarial.sum()) <= 12      # calibrated at 2% FP: 4 expected, 12 is far in the tail
    noise = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert int(shipped.predict(noise).is_adversarial.sum()) >= 15  # uniform noise is nothing like a digit
