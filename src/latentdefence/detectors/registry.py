"""The detector registry: `create_detector("dknn", classifier, k=10)`, `list_detectors()`, `register_detector`.

An entry holds the detector's class (or factory, called with F first) and `examples`: small settings that fit
on a toy model in seconds, with which the contract tests check every registered detector.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .._registry import Registry

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class DetectorEntry:
    """How to build a registered detector and how to test it."""

    factory: Callable[..., Any]
    examples: tuple[Mapping[str, Any], ...] = field(default=({},))


_DETECTORS: Registry[DetectorEntry] = Registry("detector", group="latentdefence.detectors")


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


def load_artifact(path: str | Path, classifier: Any = None, **options: Any) -> tuple[str, Any]:
    """(registry name, calibrated detector) from any registered detector's saved artifact: the class its metadata
    names (`"detector"`), or whose `ARTIFACT_FORMAT` it carries, loads it; `options` go to that class's `load`."""
    from .._io import read_metadata

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such detector artifact")
    meta = read_metadata(path)
    for name in list_detectors():
        cls: Any = detector_entry(name).factory     # a registered class with a `load` classmethod
        if meta.get("detector", object()) == getattr(cls, "__name__", None) or \
                meta.get("format", object()) == getattr(cls, "ARTIFACT_FORMAT", None):
            return name, cls.load(path, classifier=classifier, **options)
    raise ValueError(f"{path}: not the artifact of a registered detector (format {meta.get('format')!r}, detector "
                     f"{meta.get('detector')!r}; registered: {', '.join(list_detectors())})")
