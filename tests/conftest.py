"""Shared test setup: quiet progress bars, few threads, a private cache directory, reproducible property tests."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

from shared_data import SHARED_DATA

os.environ.setdefault("LATENTDEFENCE_PROGRESS", "0")
if SHARED_DATA.is_dir():   # CIFAR-10 and other downloaded datasets, where this machine has them
    os.environ.setdefault("LATENTDEFENCE_DATA_DIR", str(SHARED_DATA))
torch.set_num_threads(min(2, torch.get_num_threads()))
# Every property test draws the same cases on every run, so CI cannot go red on a new random draw; a case the
# fuzzers found is added as its own test.
settings.register_profile("reproducible", derandomize=True, database=None)
settings.load_profile("reproducible")


@pytest.fixture()
def private_cache(tmp_path, monkeypatch):
    """Point the dataset cache at a temporary folder."""
    monkeypatch.setenv("LATENTDEFENCE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
