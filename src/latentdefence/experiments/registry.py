"""The pipeline registry: each pipeline registers how to build its config for a profile and how to run one.

`register_pipeline("dld", config=..., run=...)` at the bottom of its module; `experiment_config` and
`run_experiment` look the pipeline up by the name an `Experiment` names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .._registry import Registry

T = TypeVar("T")

# (profile, dataset, data_dir, classifier checkpoint) -> the pipeline's typed config
ConfigFn = Callable[[str, str, "str | None", "str | None"], Any]
RunFn = Callable[[Any, "str | Path"], dict[str, Any]]


@dataclass(frozen=True)
class Pipeline:
    """A pipeline's two entry points: `config(profile, dataset, data_dir, checkpoint)` and `run(config, out)`;
    `splits`: its run splits over the processes torchrun starts (`reproduce --nproc N`)."""

    config: ConfigFn
    run: RunFn
    splits: bool = False


_PIPELINES: Registry[Pipeline] = Registry("pipeline", group="latentdefence.pipelines")


def choose_profile(profile: str, profiles: Mapping[str, Callable[[], T]], pipeline: str) -> T:
    """The settings of `profile` from a pipeline's table of profiles (each entry builds them); an unknown name is
    refused with the pipeline's choices."""
    if profile not in profiles:
        raise ValueError(f"unknown profile {profile!r} for {pipeline}; choose one of {', '.join(profiles)}")
    return profiles[profile]()


def register_pipeline(name: str, *, config: ConfigFn, run: RunFn, splits: bool = False) -> Pipeline:
    """Register pipeline `name`; experiments name it in `Experiment.pipeline`."""
    return _PIPELINES.add(name, Pipeline(config, run, splits))


def get_pipeline(name: str) -> Pipeline:
    """The pipeline called `name`, or an error listing the choices."""
    return _PIPELINES.get(name)


def list_pipelines() -> list[str]:
    """Registered pipeline names, sorted."""
    return _PIPELINES.names()
