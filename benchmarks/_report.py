"""What every benchmark writes with `--out`: results.json (the command, git revision, environment, settings and its
own figures) and report.md (the printed lines under a title), both atomically. Not a benchmark itself."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from latentdefence._io import atomic_path, environment_info, git_revision, write_json


def command_line(script: str, prefix: str = "") -> str:
    """How this run was started, to re-run it: `prefix python benchmarks/SCRIPT args...`."""
    return f"{prefix}python benchmarks/{script} " + " ".join(sys.argv[1:])


def write_report(out: Path, title: str, command: str, args: argparse.Namespace, figures: dict[str, Any],
                 lines: list[str]) -> None:
    """results.json and report.md in `out`."""
    write_json(out / "results.json", {"command": command, "git_revision": git_revision(),
                                      "environment": environment_info(),
                                      "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                      **figures})
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(f"# {title}\n\n`{command}`\n\n```\n" + "\n".join(lines) + "\n```\n")
