"""The pipeline registry: each pipeline registers how to build its config for a profile and how to run one.

`register_pipeline("dld", config=..., run=...)` at the bottom of its module; `experiment_config` and
`run_experiment` look the pipeline up by the name an `Experiment` names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._registry import Registry

# (profile, dataset, data_dir, classifier checkpoint) -> the pipeline's typed config
ConfigFn = Callable[[str, str, "str | None", "str | None"], Any]
RunFn = Callable[[Any, "str | Path"], dict[str, Any]]


@dataclass(frozen=True)
class Pipeline:
    """A pipeline's two entry points: `config(profile, dataset, data_dir, checkpoint)` and `run(config, out)`."""

    config: ConfigFn
    run: RunFn


_PIPELINES: Registry[Pipeline] = Registry("pipeline", group="latentdefence.pipelines")


def register_pipeline(name: str, *, config: ConfigFn, run: RunFn) -> Pipeline:
    """Register pipeline `name`; experiments name it in `Experiment.pipeline`."""
    return _PIPELINES.add(name, Pipeline(config, run))


def get_pipeline(name: str) -> Pipeline:
    """The pipeline called `name`, or an error listing the choices."""
    return _PIPELINES.get(name)


def list_pipelines() -> list[str]:
    """Registered pipeline names, sorted."""
    return _PIPELINES.names()
