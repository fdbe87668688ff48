"""Models by name, so configs, checkpoints and the CLI can refer to architectures as strings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from .taps import TappedModel

_REGISTRY: dict[str, Callable[..., TappedModel]] = {}
F = TypeVar("F", bound=Callable[..., TappedModel])


def register_model(name: str) -> Callable[[F], F]:
    """Decorator adding a model factory to the registry under `name`."""
    def wrap(factory: F) -> F:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory
    return wrap


def create_model(name: str, **kwargs: Any) -> TappedModel:
    """Build a registered architecture by name."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; available: {sorted(_REGISTRY)}")
    model = _REGISTRY[name](**kwargs)
    model.arch = name  # recorded in checkpoints so they can be rebuilt by name
    model.arch_kwargs = dict(kwargs)
    return model


def list_models() -> list[str]:
    """Names of every registered architecture."""
    return sorted(_REGISTRY)
