"""Regenerate the README's results table from docs/results/*/results.json (run after committing results)."""

from __future__ import annotations

import sys
from pathlib import Path

from latentdefence.evaluation.summary import update_readme

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    check = "--check" in sys.argv
    ok = update_readme(ROOT / "README.md", ROOT / "docs" / "results", check=check)
    if check and not ok:
        sys.exit("README.md's results table is out of date: run python scripts/update_readme.py")
