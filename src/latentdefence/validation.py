"""The one home of input checks: every public entry point rejects bad input here, by name, before any work.

Attacks, detectors, the guarded classifier, the server, the CLI, artifact loading and experiment configs all
call these functions, so one input gets one answer everywhere. Each failure is an `InputValidationError`
(a `ValueError`) whose message starts with the argument's name; a wrong type or dtype is an `InputTypeError`
(also a `TypeError`). The contract per entry point is in docs/inputs.md.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any, Literal

import torch


class InputValidationError(ValueError):
    """A bad input; `argument` names the parameter, option or setting it was given for."""

    def __init__(self, argument: str, problem: str) -> None:
        super().__init__(f"{argument} {problem}")
        self.argument = argument


class InputTypeError(InputValidationError, TypeError):
    """A bad input of the wrong type or dtype (catchable as TypeError too)."""


# -- images and labels ---------------------------------------------------------------------------------------
def check_images(images: Any, name: str = "images", *, shape: Sequence[int] | None = None,
                 dtype: torch.dtype | None = None, allow_empty: bool = False) -> torch.Tensor:
    """`images` as floating (N, C, H, W) pixels, finite, in [0, 1] (of `shape` (C, H, W) where known).

    Floating images of another dtype than `dtype` (e.g. float64 for a float32 model) are converted to it
    explicitly; integer images (0-255) are rejected, never rescaled. Returns the (converted) images.
    """
    if not isinstance(images, torch.Tensor):
        raise InputTypeError(name, f"must be a torch.Tensor, got {type(images).__name__}")
    _check_storage(images, name)
    if not images.is_floating_point():
        raise InputTypeError(name, f"must be floating point pixels in [0, 1], got dtype {images.dtype}")
    want = "(N, C, H, W)" if shape is None else f"(N, {', '.join(map(str, shape))})"
    if images.ndim != 4:
        raise InputValidationError(name, f"must be shaped {want}, got {tuple(images.shape)}")
    if not allow_empty and len(images) == 0:
        raise InputValidationError(name, f"must be a non-empty batch shaped {want}, got {tuple(images.shape)}")
    if shape is not None:
        c, h, w = shape
        if images.shape[1] != c:
            raise InputValidationError(name, f"have {images.shape[1]} channels, the model expects {c}")
        if tuple(images.shape[2:]) != (h, w):
            raise InputValidationError(name, f"are {images.shape[2]}x{images.shape[3]} (HxW), "
                                             f"the model expects {h}x{w}")
    values = images.detach()
    finite = torch.isfinite(values)
    if not finite.all():
        bad = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
        raise InputValidationError(name, f"contain NaN or infinite values (images {bad[:10]})")
    if values.numel():
        low, high = float(values.min()), float(values.max())
        if low < 0.0 or high > 1.0:
            raise InputValidationError(name, f"must lie in [0, 1], got values in [{low:g}, {high:g}] "
                                             "(divide 0-255 pixels by 255; normalisation belongs in the model)")
    return images if dtype is None or images.dtype == dtype else images.to(dtype)


def _check_storage(tensor: torch.Tensor, name: str) -> None:
    """A dense tensor with data: a sparse or quantized layout, or a `meta` tensor (shape without values), would reach
    torch's own errors deep inside a model."""
    if tensor.layout != torch.strided:
        raise InputTypeError(name, f"must be a dense tensor, got layout {tensor.layout} (call .to_dense() first)")
    if tensor.is_meta:
        raise InputTypeError(name, "is a 'meta' tensor: it has a shape but no values")
    if tensor.is_quantized:
        raise InputTypeError(name, f"must not be quantized, got dtype {tensor.dtype} (call .dequantize() first)")


def check_labels(labels: Any, n: int, num_classes: int | None = None, name: str = "labels") -> torch.Tensor:
    """`labels` as int64 (n,) class indices in [0, num_classes)."""
    if isinstance(labels, torch.Tensor):
        _check_storage(labels, name)
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64:
        raise InputTypeError(name, f"must be an int64 tensor of shape ({n},), got "
                                   f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != (n,):
        raise InputValidationError(name, f"must be int64 of shape ({n},), got shape {tuple(labels.shape)}")
    if labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or (num_classes is not None and high >= num_classes):
            span = "non-negative" if num_classes is None else f"in [0, {num_classes - 1}]"
            raise InputValidationError(name, f"must be class indices {span}, got values in [{low}, {high}]")
    return labels


# -- numbers (budgets, counts, options, loaded metadata) -----------------------------------------------------
def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (not a bool or str) within the given bounds; returned as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputTypeError(name, f"must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InputValidationError(name, f"must be finite, got {value}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "-inf" if low is None else f"{low:g}"
        right = "inf" if high is None else f"{high:g}"
        span = f"{'(' if low_open or low is None else '['}{left}, {right}{')' if high_open or high is None else ']'}"
        raise InputValidationError(name, f"must be in {span}, got {value:g}")
    return value


def check_count(name: str, value: Any, minimum: int = 1, maximum: int | None = None) -> int:
    """An integer (not a bool, float or str) >= `minimum` (and <= `maximum`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InputTypeError(name, f"must be an integer, got {type(value).__name__} {value!r}")
    count = int(value)
    if count < minimum or (maximum is not None and count > maximum):
        span = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise InputValidationError(name, f"must be an integer {span}, got {value}")
    return count


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """One of `choices`."""
    options = tuple(choices)
    if value not in options:
        raise InputValidationError(name, f"must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


# -- saved artifacts ----------------------------------------------------------------------------------------
def artifact_field(path: Any, meta: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """`meta[key]` of the artifact at `path`, which must be a `kind`; else an error naming the file and field."""
    value = meta.get(key)
    if not isinstance(value, kind):
        wanted = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        problem = "is missing" if value is None else f"must be a {wanted}, got {type(value).__name__}"
        raise InputValidationError(f"{path}: metadata field {key!r}", problem)
    return value


def check_finite_tensors(path: Any, tensors: Mapping[str, torch.Tensor], prefix: str = "") -> None:
    """Every floating tensor under `prefix` in the artifact at `path` finite: a NaN weight is the artifact's fault,
    named here, not the input images' at the first prediction."""
    for key, value in tensors.items():
        if key.startswith(prefix) and value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            raise InputValidationError(f"{path}: tensor {key!r}", f"holds {bad} NaN or infinite value(s); the artifact "
                                       "is damaged (or was saved from a diverged model)")


# -- experiment configs --------------------------------------------------------------------------------------
_COUNTS = ("steps", "epochs", "restarts", "batch_size", "per_class", "candidates", "queries", "every", "samples",
           "targets", "max_train", "latent_dim", "limit", "n_calibration", "n_clean", "n_masking", "kernel_size")
_POSITIVE = ("step_size", "lr")


def check_settings(config: Any, prefix: str = "") -> None:
    """Every setting of a (nested) experiment config dataclass is sane, checked by its name before any work.

    Rules: every float is finite; `*fpr` / `*fprs` lie in [0, 1); counts (`*steps`, `*epochs`, `*restarts`,
    `*batch_size`, `*per_class`, `k`, `n`, ...) are integers >= 1 (or None); `*eps*` >= 0; `*lr`,
    `*step_size` > 0. Names outside these rules are only checked for finiteness.
    """
    if not is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"check_settings expects a dataclass instance, got {type(config).__name__}")
    for f in fields(config):
        _check_setting(f"{prefix}{f.name}", f.name, getattr(config, f.name))


def _check_setting(key: str, name: str, value: Any) -> None:
    if value is None or isinstance(value, (bool, str)):
        return
    if is_dataclass(value) and not isinstance(value, type):
        check_settings(value, prefix=f"{key}.")
    elif isinstance(value, Mapping):
        for sub, item in value.items():
            _check_setting(f"{key}.{sub}", name, item)
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            _check_setting(f"{key}[{i}]", name.removesuffix("s") if name.endswith("fprs") else name, item)
    elif isinstance(value, numbers.Real):
        _check_scalar(key, name, value)


def _check_scalar(key: str, name: str, value: numbers.Real) -> None:
    if name.endswith("fpr"):
        check_number(key, value, low=0.0, high=1.0, high_open=True)
    elif isinstance(value, numbers.Integral) and (name in ("k", "n") or name.endswith(_COUNTS)):
        check_count(key, value)
    elif name.endswith(_POSITIVE):
        check_number(key, value, low=0.0, low_open=True)
    elif "eps" in name.split("_") and not name.endswith("epochs"):
        check_number(key, value, low=0.0)
    else:
        check_number(key, value)


def model_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's weights (images are converted to it), None without weights."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


OutputKind = Literal["file", "folder", "checkpoint"]


def _same_file_forms(path: Path, kind: str) -> set[Path]:
    """Every file a path stands for: a checkpoint stem is `stem.safetensors` and `stem.json` too."""
    path = path.expanduser().resolve()
    forms = {path}
    if (kind == "checkpoint" and path.suffix == "") or path.suffix in (".safetensors", ".json"):
        stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
        forms |= {stem, stem.with_suffix(".safetensors"), stem.with_suffix(".json")}
    return forms


def check_output(path: Any, kind: OutputKind = "file", inputs: Sequence[Any] = (), name: str = "--out") -> Path:
    """An output path checked before any work (issue 37): not one of the command's `inputs` (resolved, a checkpoint
    stem and its files alike), not an existing directory where a file is written (nor a file where a folder is),
    and in a folder this process may write (the nearest existing ancestor)."""
    out = Path(path).expanduser()
    mine = _same_file_forms(out, kind)
    for source in inputs:
        if source is not None and mine & _same_file_forms(Path(source), "checkpoint"):
            raise InputValidationError(name, f"{out} is an input of this command ({source}); writing it would "
                                       "destroy what it reads: choose another path")
    written = [p for p in mine if p.suffix in (".safetensors", ".json")] if kind == "checkpoint" else [out]
    if kind == "folder" and out.exists() and not out.is_dir():
        raise InputValidationError(name, f"{out} is an existing file; give a folder")
    if kind != "folder" and any(p.is_dir() for p in written):
        raise InputValidationError(name, f"{next(p for p in written if p.is_dir())} is an existing directory; give a "
                                   "file path")
    ancestor = out.resolve() if kind == "folder" else out.resolve().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputValidationError(name, f"{out}: {ancestor} is not a folder this process can write to")
    return out
