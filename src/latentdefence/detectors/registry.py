"""The detector registry: `create_detector("dknn", classifier, k=10)`, `list_detectors()`, `register_detector`.

An entry holds the detector's class (or factory, called with F first) and `examples`: small settings that fit
on a toy model in seconds, with which the contract tests check every registered detector.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .._registry import Registry

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class DetectorEntry:
    """How to build a registered detector and how to test it."""

    factory: Callable[..., Any]
    examples: tuple[Mapping[str, Any], ...] = field(default=({},))


_DETECTORS: Registry[DetectorEntry] = Registry("detector", builtins=(
    "latentdefence.detectors.dknn", "latentdefence.detectors.mahalanobis", "latentdefence.detectors.lid",
    "latentdefence.dld.detector"))


def register_detector(name: str, *, examples: tuple[Mapping[str, Any], ...] = ({},)) -> Callable[[F], F]:
    """Class decorator: `create_detector(name, classifier, **kw)` builds `cls(classifier, **kw)`."""
    def add(factory: F) -> F:
        _DETECTORS.add(name, DetectorEntry(factory, examples))
        return factory
    return add


def create_detector(name: str, classifier: Any, **settings: Any) -> Any:
    """The registered detector `name` on classifier F, with `settings` (keyword arguments of its class)."""
    return _DETECTORS.get(name).factory(classifier, **settings)


def detector_entry(name: str) -> DetectorEntry:
    """The registration of `name` (its factory and test settings)."""
    return _DETECTORS.get(name)


def list_detectors() -> list[str]:
    """Registered detector names, sorted."""
    return _DETECTORS.names()
