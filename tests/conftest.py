"""Shared test setup: quiet progress bars, few threads, a private cache directory."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("LATENTDEFENCE_PROGRESS", "0")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture()
def private_cache(tmp_path, monkeypatch):
    """Point the dataset cache at a temporary folder."""
    monkeypatch.setenv("LATENTDEFENCE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"
