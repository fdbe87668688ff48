"""Stage caching: an artifact directory keyed by the settings that produced it.

A second run, or a second experiment sharing a stage with the same settings, finds the
directory marked complete and skips the work; an interrupted stage has no marker and reruns.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from .._io import write_json

_MARKER = "COMPLETE.json"


def settings_key(settings: Mapping[str, Any] | Any) -> str:
    """Short stable hash of a settings mapping or dataclass."""
    if is_dataclass(settings) and not isinstance(settings, type):
        settings = asdict(settings)
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def default_cache_root() -> Path:
    """$LATENTDEFENCE_RUNS or ./runs/cache."""
    return Path(os.environ.get("LATENTDEFENCE_RUNS", "runs")) / "cache"


def stage_dir(stage: str, settings: Mapping[str, Any] | Any, root: Path | None = None) -> Path:
    """The directory for `stage` with these settings (created if missing)."""
    path = (root or default_cache_root()) / f"{stage}-{settings_key(settings)}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def is_complete(path: Path) -> bool:
    """True when the stage in `path` finished and recorded its marker."""
    return (path / _MARKER).is_file()


def mark_complete(path: Path, info: Mapping[str, Any] | None = None) -> None:
    """Record that the stage in `path` finished (after all its files were written atomically)."""
    write_json(path / _MARKER, dict(info or {}))
