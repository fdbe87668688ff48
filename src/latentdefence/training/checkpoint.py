"""Checkpoints as safetensors + a JSON sidecar: loadable without pickle, rebuilt by architecture name."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, overload

import torch

from .._io import environment_info, git_revision, load_tensors, read_json, save_tensors, sha256_file, write_json
from ..models import TappedModel, create_model
from ..validation import InputValidationError, check_finite_tensors


def _paths(path: str | Path) -> tuple[Path, Path]:
    base = Path(path)
    base = base.with_suffix("") if base.suffix in (".safetensors", ".json") else base
    return base.with_suffix(".safetensors"), base.with_suffix(".json")


def checkpoint_digest(path: str | Path) -> str:
    """sha256 of a checkpoint's weights: names a classifier by content, so caches survive moves and renames."""
    weights, _ = _paths(path)
    if not weights.is_file():
        raise FileNotFoundError(f"no checkpoint weights at {weights}")
    return sha256_file(weights)


def save_checkpoint(path: str | Path, model: torch.nn.Module, metadata: dict[str, Any] | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write `path.safetensors` (weights, plus optional extra state) and `path.json`, each atomically."""
    weights, sidecar = _paths(path)
    arch = getattr(model, "arch", None)
    meta = {"arch": arch, "arch_kwargs": getattr(model, "arch_kwargs", {}), "git_revision": git_revision(),
            "environment": environment_info(), **(metadata or {})}
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"extra.{k}": v for k, v in (extra_tensors or {}).items()})
    save_tensors(weights, tensors, {"arch": arch, "arch_kwargs": meta["arch_kwargs"]})
    write_json(sidecar, meta)
    return weights


@overload
def load_checkpoint(path: str | Path, map_location: str | torch.device = ...,
                    with_extra: Literal[False] = ...) -> tuple[TappedModel, dict[str, Any]]: ...
@overload
def load_checkpoint(path: str | Path, map_location: str | torch.device = ..., *,
                    with_extra: Literal[True]) -> tuple[TappedModel, dict[str, Any], dict[str, torch.Tensor]]: ...
def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    with_extra: bool = False) -> tuple[TappedModel, dict[str, Any]] | tuple[
                        TappedModel, dict[str, Any], dict[str, torch.Tensor]]:
    """(model, metadata[, extra tensors]) from a checkpoint written by `save_checkpoint`."""
    weights, sidecar = _paths(path)
    meta = read_json(sidecar)
    if not meta.get("arch"):
        raise ValueError(f"{sidecar}: no 'arch' recorded; cannot rebuild the model by name")
    tensors, stored = load_tensors(weights)
    for key in ("arch", "arch_kwargs"):   # the sidecar carries no digest: it must agree with the weights' header
        if key in stored and stored[key] != meta.get(key, {}):
            raise InputValidationError(f"{sidecar}: field {key!r}", f"is {meta.get(key)!r} but {weights.name} was saved "
                                       f"for {stored[key]!r}: the sidecar was edited or belongs to other weights")
    check_finite_tensors(weights, tensors)
    model = create_model(meta["arch"], **meta.get("arch_kwargs", {}))
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{weights}: weights do not fit architecture {meta['arch']!r} ({err})") from err
    model.to(map_location)
    if with_extra:
        extra = {k[len("extra."):]: v for k, v in tensors.items() if k.startswith("extra.")}
        return model, meta, extra
    return model, meta
