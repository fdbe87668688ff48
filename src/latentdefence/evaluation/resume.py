"""Resumable detector evaluations (issue 40): each finished attack stage is written as it ends, so a killed run loses
at most the stage it was in.

A stage's file holds its outputs and every random state after it (the evaluation's generator, torch's, NumPy's and
Python's), written atomically. A re-run of the same evaluation (same `key`: threat model, budget, seed, images,
detectors) loads the stage instead of attacking again and restores the random states, so the stages after it draw
exactly the random numbers the uninterrupted run drew: the results are the same, bit for bit on CPU.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import load_tensors, save_tensors

log = logging.getLogger(__name__)
FORMAT = "latentdefence.evaluation-stage/1"


class StageCheckpoints:
    """Finished attack stages of one evaluation in `folder` (None: nothing is kept); `resumed` lists those loaded."""

    def __init__(self, folder: str | Path | None, key: str) -> None:
        self.folder = None if folder is None else Path(folder)
        self.key = key
        self.resumed: list[str] = []

    def stage(self, name: str, generator: torch.Generator, compute: Callable[[], tuple[dict[str, torch.Tensor], Any]]
              ) -> tuple[dict[str, torch.Tensor], Any]:
        """(tensors, JSON value) of stage `name`: loaded with the random states after it when this evaluation wrote
        it before, else computed and written."""
        if self.folder is None:
            return compute()
        path = self.folder / f"{name}.safetensors"
        if path.is_file():
            tensors, meta = load_tensors(path)
            if meta.get("format") == FORMAT and meta.get("key") == self.key:
                _restore(generator, tensors, meta)
                self.resumed.append(name)
                log.info("evaluation stage %s: resumed from %s", name, path)
                return {k.removeprefix("out."): v for k, v in tensors.items() if k.startswith("out.")}, meta["value"]
            log.info("evaluation stage %s: %s belongs to another evaluation; attacking again", name, path)
        out, value = compute()
        self.folder.mkdir(parents=True, exist_ok=True)
        state = _random_state(generator)
        save_tensors(path, {**{f"out.{k}": v for k, v in out.items()}, **state[0]},
                     {"format": FORMAT, "key": self.key, "value": value, **state[1]})
        return out, value


def evaluation_key(parts: Mapping[str, Any], tensors: Sequence[torch.Tensor]) -> str:
    """A digest of what makes two evaluations the same: JSON-able `parts` (settings) and `tensors` (images, labels,
    each detector's scores on a few of them), so a stage file is reused only by the evaluation that wrote it."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for tensor in tensors:
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _random_state(generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    kind, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    tensors = {"rng.generator": generator.get_state(), "rng.torch": torch.get_rng_state(),
               "rng.numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64))}
    return tensors, {"numpy": [kind, int(position), int(has_gauss), float(cached)],
                     "python": [version, list(internal), gauss]}


def _restore(generator: torch.Generator, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    kind, position, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), position, has_gauss, cached))
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
