"""No module of the package reaches into another's private names: what modules share is public and documented.

Private *modules* (``_io``, ``_registry``, ``_progress``, ``_seed``, ``_timing``) are the package's own shared helpers and may be
imported as modules; ``from x import _name`` of a function, class or constant, or ``module._name`` on an imported
module, is what this test forbids.
"""

from __future__ import annotations

import ast
from pathlib import Path

import latentdefence

PACKAGE = Path(latentdefence.__file__).parent


def _module_of(path: Path) -> list[str]:
    """The dotted name of a source file, as a list of parts (``__init__`` names its package)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _resolve(path: Path, node: ast.ImportFrom) -> list[str]:
    """The absolute dotted name `from ... import` reads from."""
    if not node.level:
        return (node.module or "").split(".")
    package = _module_of(path) if path.name == "__init__.py" else _module_of(path)[:-1]
    base = package[:len(package) - node.level + 1]
    return base + (node.module.split(".") if node.module else [])


def _is_module(parts: list[str]) -> bool:
    """Whether `parts` names a module or package of latentdefence."""
    if not parts or parts[0] != PACKAGE.name:
        return False
    target = PACKAGE.parent.joinpath(*parts)
    return target.with_suffix(".py").is_file() or (target / "__init__.py").is_file()


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(path: Path, source: str | None = None) -> list[str]:
    """Every import of another module's private name in `path` (or in `source` read as that module), and every
    `module._name` on an imported module."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    found, modules = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(path, node)
            for alias in node.names:
                if _is_module(source + [alias.name]):
                    modules.add(alias.asname or alias.name)
                elif _private(alias.name):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: from {'.'.join(source)} import "
                                 f"{alias.name}")
        elif isinstance(node, ast.Import):
            modules.update(alias.asname or alias.name.split(".")[0] for alias in node.names)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in modules):
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    offences = [use for path in sorted(PACKAGE.rglob("*.py")) for use in private_uses(path)]
    assert offences == []


def test_the_check_catches_a_private_import_and_allows_a_private_module() -> None:
    source = ("from .dld import _hidden\nfrom .. import _io\nfrom .._io import write_json\n"
              "from . import dld\ndld._row(1)\n_io.atomic_path('x')\n")
    found = private_uses(PACKAGE / "experiments" / "dld_ablation.py", source)
    assert found == ["experiments/dld_ablation.py:1: from latentdefence.experiments.dld import _hidden",
                     "experiments/dld_ablation.py:5: dld._row"]
