"""`--set key=value` for experiment configs: change any (nested) dataclass setting from the command line."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass, replace
from typing import Any, TypeVar

C = TypeVar("C")

# Settings with two names, each kept because it is part of its experiment's stage-cache keys and results.json:
# CarliniWagnerL2's `binary_search_steps` is DLD's `attacks.cw_binary_search_steps` and LAD's
# `attack.cw_search_steps` (the CLI's `attack run --search-steps`). Either name sets it in either experiment.
ALIASES = {"cw_search_steps": "cw_binary_search_steps", "cw_binary_search_steps": "cw_search_steps"}


def apply_overrides(config: C, assignments: Sequence[str]) -> C:
    """A copy of `config` with each "a.b.c=value" applied; the value is parsed as the setting's current type."""
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE (e.g. attack.pgd_steps=40), got {assignment!r}")
        config = _set(config, key.strip().split("."), raw.strip(), key)
    return config


def _set(obj: Any, path: list[str], raw: str, key: str) -> Any:
    if not is_dataclass(obj) or isinstance(obj, type):
        raise KeyError(f"setting {key!r}: {'.'.join(path)} is not inside a group of settings")
    names = [f.name for f in fields(obj)]
    name = path[0] if path[0] in names else ALIASES.get(path[0], path[0])
    if name not in names:
        raise KeyError(f"unknown setting {key!r}; {path[0]!r} is not one of {', '.join(names)}")
    current = getattr(obj, name)
    value = _set(current, path[1:], raw, key) if len(path) > 1 else _parse(raw, current, key)
    return replace(obj, **{name: value})


def _parse(raw: str, current: Any, key: str) -> Any:
    """`raw` as the type of `current` (bool, int, float, str, tuple, mapping; anything when current is None)."""
    try:
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError("expected true or false")
            return raw.lower() in ("true", "1", "yes")
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
        if isinstance(current, str):
            return raw
        if isinstance(current, tuple):
            items = json.loads(raw) if raw.startswith("[") else [v for v in raw.split(",") if v]
            kind = type(current[0]) if current else str
            return tuple(kind(v) for v in items)
        if isinstance(current, Mapping):
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError("expected a JSON object")
            return {**current, **value}
        if current is None:
            return None if raw.lower() in ("none", "null") else json.loads(raw) if raw[:1] in "[{0123456789-" else raw
    except (ValueError, TypeError) as err:
        raise ValueError(f"setting {key!r}: cannot read {raw!r} as {type(current).__name__} ({err})") from err
    raise ValueError(f"setting {key!r} is a {type(current).__name__}, which --set cannot change")
