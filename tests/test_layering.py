"""Issue 39: generic code sits below the papers and nothing imports upward. Every import in the package (module
level or inside a function) goes to the same layer or a lower one; a cycle between layers cannot be written."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "latentdefence"

# Lowest first. The detector contract (`detectors.base`, `detectors.registry`) is foundation: attacks read it, and
# every detector (above the attacks, which some detectors train with) implements it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("_io", "_progress", "_seed", "_timing", "_registry", "validation", "signing", "stats", "models", "data",
     "detectors.base", "detectors.registry"),
    ("attacks",),
    ("detectors",),
    ("evaluation",),
    ("training",),
    ("dld", "lad"),
    ("experiments",),
    ("serving",),
    ("cli", "__main__", "__init__"),
)


def layer(module: str) -> int:
    """The layer of a module path relative to the package ("dld.detector"), by its longest listed prefix."""
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, rank = len(name), i
    if rank is None:
        raise AssertionError(f"latentdefence.{module} belongs to no layer: add it to LAYERS")
    return rank


def imports(source: str, module: str) -> list[tuple[int, str]]:
    """(line, imported module relative to the package) for every import of a latentdefence module in the source of
    `module` ("dld.detector"; a package is its own name), module level or inside functions."""
    package = module.split(".") if _is_package(module) else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("latentdefence."):
                target = node.module.removeprefix("latentdefence.")
            else:
                continue
            if not node.module and node.level:       # `from . import x`: each name is a module
                found += [(node.lineno, f"{target}.{a.name}".strip(".")) for a in node.names]
            else:
                found.append((node.lineno, target))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.removeprefix("latentdefence.")) for a in node.names
                      if a.name.startswith("latentdefence.")]
    return found


def _is_package(module: str) -> bool:
    return (PACKAGE.joinpath(*module.split(".")) / "__init__.py").is_file()


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def upward_imports(source: str, module: str) -> list[str]:
    """The imports in `module`'s source that go to a higher layer."""
    mine = layer(module)
    return [f"{module}:{line} imports latentdefence.{target} (layer {layer(target)} above its {mine})"
            for line, target in imports(source, module) if target and layer(target) > mine]


def test_no_module_imports_a_higher_layer() -> None:
    upward = [line for path in sorted(PACKAGE.rglob("*.py")) for line in upward_imports(path.read_text(), _module(path))]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_the_layering_check_sees_relative_absolute_and_late_imports() -> None:
    """So the check above cannot pass vacuously."""
    assert ("detectors.knn_detector" in [t for _, t in imports((PACKAGE / "detectors" / "dknn.py").read_text(),
                                                                 "detectors.dknn")])
    late = "import torch\n\ndef f():\n    from ..dld import DeepLatentDefence\n"
    assert upward_imports(late, "evaluation.metrics") == [
        "evaluation.metrics:4 imports latentdefence.dld (layer 5 above its 3)"]
    assert upward_imports("import latentdefence.serving.app\n", "attacks.pgd")
    assert upward_imports("from .. import serving\n", "detectors") and not upward_imports("from . import knn\n",
                                                                                          "detectors")
    assert layer("dld.detector") > layer("detectors.knn_detector") > layer("attacks.base") > layer("detectors.base")


@pytest.mark.parametrize("module", ["stats", "detectors.base", "attacks", "detectors", "evaluation", "dld", "lad",
                                    "experiments", "serving", "cli"])
def test_each_layer_imports_first_in_a_fresh_interpreter(module: str) -> None:
    """No import cycle that only an import order hides: each layer's entry imports on its own."""
    done = subprocess.run([sys.executable, "-c", f"import latentdefence.{module}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
