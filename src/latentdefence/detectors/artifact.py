"""One safetensors file per baseline detector: F's weights, the fitted state, the calibration; JSON metadata."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch

from .._io import load_tensors, save_tensors
from ..attacks.base import Attack
from .base import ConformalDetector
from ..models import TappedModel
from ..validation import artifact_field

FORMAT = "latentdefence.detectors/1"
D = TypeVar("D", bound=ConformalDetector)


def save_detector(det: ConformalDetector, path: str | Path, state: Mapping[str, torch.Tensor],
                  fitted: Mapping[str, Any]) -> None:
    """Write `det` atomically: its artifact base, `state` tensors and `fitted` JSON values (e.g. taps_)."""
    tensors, meta = det._artifact()
    params = {name: getattr(det, name) for name in inspect.signature(type(det).__init__).parameters
              if name not in ("self", "classifier")}
    attack = params.pop("attack", None)
    params = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}
    meta.update({"format": FORMAT, "detector": type(det).__name__, "params": params, "fitted": dict(fitted),
                 "attack": attack.describe() if isinstance(attack, Attack) else None})
    save_tensors(path, {**tensors, **state}, meta)


def load_detector(cls: type[D], path: str | Path,
                  classifier: TappedModel | None) -> tuple[D, dict[str, torch.Tensor], dict[str, Any]]:
    """(detector with params, F and calibration restored, tensors, fitted JSON) from `save_detector`'s file.

    The attack that trained a logistic regression is recorded under "attack", not rebuilt (``attack=None``).
    """
    tensors, meta = load_tensors(path)
    if meta.get("format") != FORMAT or meta.get("detector") != cls.__name__:
        raise ValueError(f"{path}: not a {cls.__name__} artifact (format {meta.get('format')!r}, "
                         f"detector {meta.get('detector')!r})")
    params = artifact_field(path, meta, "params", Mapping)
    det = cls(cls._artifact_classifier(path, tensors, meta, classifier), **params)  # type: ignore[call-arg]  # subclasses take F first; the ABC declares no __init__
    det._restore_calibration(tensors, meta, path)
    return det, tensors, artifact_field(path, meta, "fitted", Mapping)
