"""Regenerate the results tables from the committed results.json files (the README's headline rows, every row in
docs/results/README.md), docs/results/README.md's index and provenance from docs/results/catalog.toml, and the docs'
excerpts of report tables and docs/leaderboard.md (run after committing results); --check only says whether they
are current."""

from __future__ import annotations

import sys
from pathlib import Path

from latentdefence.evaluation.catalog import update_index
from latentdefence.evaluation.leaderboard import update_leaderboard
from latentdefence.evaluation.summary import sync_excerpts, update_readme

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    check = "--check" in sys.argv
    results = ROOT / "docs" / "results"
    stale = [] if update_readme(ROOT / "README.md", results, check=check, headline=True) else ["README.md"]
    index = update_readme(results / "README.md", results, check=check)
    index = update_index(results / "README.md", results / "catalog.toml", results, check=check) and index
    stale += [] if index else ["docs/results/README.md"]
    stale += [doc.name for doc in sorted((ROOT / "docs").glob("*.md")) if not sync_excerpts(doc, ROOT, check=check)]
    stale += [] if update_leaderboard(results, ROOT / "docs" / "leaderboard.md", check=check) else ["docs/leaderboard.md"]
    if stale:
        sys.exit(f"out of date: {', '.join(stale)}; run python scripts/update_readme.py")
