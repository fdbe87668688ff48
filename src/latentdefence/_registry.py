"""One name -> entry table shared by the attack, detector and experiment registries (as `models.registry`)."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name; the modules an installed package names under the entry-point `group` are imported before the
    first look-up, so they register (pyproject.toml: `[project.entry-points."latentdefence.detectors"]`)."""

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind = kind
        self._group = group
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        """Register `entry` as `name`; a second entry under one name is an error, not a silent override."""
        if not name or not isinstance(name, str):
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self._entries and self._entries[name] != entry:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry called `name`, or an error listing the choices."""
        self._load()
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; choose one of: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def names(self, where: Callable[[T], bool] | None = None) -> list[str]:
        """Registered names, sorted (those whose entry passes `where`)."""
        self._load()
        return sorted(n for n, e in self._entries.items() if where is None or where(e))

    def _load(self) -> None:
        if self._group is not None:
            group, self._group = self._group, None
            for entry in entry_points(group=group):
                entry.load()
