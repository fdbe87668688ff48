"""The attack registry: `create_attack("pgd", eps=0.3)`, `list_attacks()`, and `register_attack` for a new one.

An entry says what the attack is called on (`on`: "model" for `attack(model, images, labels)`, "detector" for
`attack(detector, images, labels)`), which threat models it offers (`targeted`), and `examples`: small settings
that run it in about a second, with which the contract tests check every registered attack.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .._registry import Registry

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class AttackEntry:
    """How to build a registered attack and how to test it."""

    factory: Callable[..., Any]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    on: str = "model"                                    # "model" or "detector"
    targeted: tuple[bool, ...] = (False, True)           # threat models offered: untargeted, targeted
    examples: tuple[Mapping[str, Any], ...] = ({},)      # small settings for the contract tests

    def parameters(self) -> set[str]:
        """The keyword settings `create_attack` accepts for this attack."""
        return set(inspect.signature(self.factory).parameters) - set(self.defaults)


_ATTACKS: Registry[AttackEntry] = Registry("attack", group="latentdefence.attacks")   # ours: `attacks/__init__`


def register_attack(name: str, *, on: str = "model", targeted: tuple[bool, ...] = (False, True),
                    examples: tuple[Mapping[str, Any], ...] = ({},), **defaults: Any) -> Callable[[F], F]:
    """Class decorator: `create_attack(name, **kw)` builds `cls(**defaults, **kw)`; stack it for variants."""
    if on not in ("model", "detector"):
        raise ValueError(f"on must be 'model' or 'detector', got {on!r}")

    def add(factory: F) -> F:
        _ATTACKS.add(name, AttackEntry(factory, dict(defaults), on, targeted, examples))
        return factory
    return add


def create_attack(name: str, **settings: Any) -> Any:
    """The registered attack `name` with `settings` (keyword arguments of its class)."""
    entry = _ATTACKS.get(name)
    unknown = set(settings) - entry.parameters()
    if unknown:
        raise TypeError(f"attack {name!r} takes no setting {', '.join(sorted(unknown))}; "
                        f"it takes {', '.join(sorted(entry.parameters()))}")
    return entry.factory(**entry.defaults, **settings)


def attack_entry(name: str) -> AttackEntry:
    """The registration of `name` (what it is called on, its threat models, its test settings)."""
    return _ATTACKS.get(name)


def list_attacks(on: str | None = None) -> list[str]:
    """Registered attack names, sorted; `on="model"` or `"detector"` keeps those called on it."""
    return _ATTACKS.names(None if on is None else lambda e: e.on == on)
