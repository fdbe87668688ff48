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
class InEvaluation:
    """How a detector attack joins every detector evaluation (`evaluation.evaluate_detectors`), ART's estimator
    requirements in one place: whether it applies, how it reads the evaluation's budget, where it starts."""

    applies: Callable[[Any, Any], str | None]            # (detector, threat model) -> why it cannot run, or None
    settings: Callable[[Any], Mapping[str, Any]]         # the evaluation's Budget -> keyword settings (not eps, norm)
    label: str | None = None                             # its name in results.json (default: the registry name)
    order: int = 100                                     # evaluation order
    gradient: bool = True                                # gradient-based (the sanity checks' strongest is among these)
    starts: str | None = None                            # an earlier attack's images it starts from ("autoattack")
    # True: its `generator` may be an `ImageStreams` (it draws through `uniform_like` / `normal_like` / the streams),
    # so its outcome on an image does not depend on the batch or the process; False: it gets a torch.Generator
    per_image_draws: bool = False


@dataclass(frozen=True)
class AttackEntry:
    """How to build a registered attack and how to test it."""

    factory: Callable[..., Any]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    on: str = "model"                                    # "model" or "detector"
    targeted: tuple[bool, ...] = (False, True)           # threat models offered: untargeted, targeted
    examples: tuple[Mapping[str, Any], ...] = ({},)      # small settings for the contract tests
    evaluation: InEvaluation | None = None               # detector attacks: how every detector evaluation runs it

    def parameters(self) -> set[str]:
        """The keyword settings `create_attack` accepts for this attack."""
        return set(inspect.signature(self.factory).parameters) - set(self.defaults)


_ATTACKS: Registry[AttackEntry] = Registry("attack", group="latentdefence.attacks")   # ours: `attacks/__init__`


def register_attack(name: str, *, on: str = "model", targeted: tuple[bool, ...] = (False, True),
                    examples: tuple[Mapping[str, Any], ...] = ({},), evaluation: InEvaluation | None = None,
                    **defaults: Any) -> Callable[[F], F]:
    """Class decorator: `create_attack(name, **kw)` builds `cls(**defaults, **kw)`; stack it for variants. A detector
    attack with `evaluation` joins every detector evaluation where it applies."""
    if on not in ("model", "detector"):
        raise ValueError(f"on must be 'model' or 'detector', got {on!r}")
    if evaluation is not None and on != "detector":
        raise ValueError(f"attack {name!r}: only detector attacks join detector evaluations (on='detector')")

    def add(factory: F) -> F:
        _ATTACKS.add(name, AttackEntry(factory, dict(defaults), on, targeted, examples, evaluation))
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


def evaluation_attacks() -> dict[str, str]:
    """{label in results: registry name} of the detector attacks every detector evaluation runs, in their order."""
    entries = [(name, attack_entry(name).evaluation) for name in list_attacks(on="detector")]
    ordered = sorted(((e.order, e.label or name, name) for name, e in entries if e is not None))
    return {label: name for _, label, name in ordered}
