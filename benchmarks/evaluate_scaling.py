"""Sharded detector evaluation (issue 40): 1 process x 1 thread vs 1 process x 2 threads vs 2 processes x 1 thread,
the same `latentdefence evaluate-detector` command on the committed detector, one run each, in one session.

Run: .venv/bin/python benchmarks/evaluate_scaling.py [--n 64] [--batch-size N/NPROC] [--version quick] [--nproc 2]
     [--artifact docs/results/dld-mnist-table1/detector.safetensors] [--out docs/results/archive/evaluate-scaling]
Targets: 2 processes x 1 thread >= 1.7x one process at one thread and faster than one process at two threads, with
the same per-image outcomes (checked). All three runs use one batch size (by default n / nproc, so each process
gets whole batches, the sanity checks' too). Prints each run's wall time, the attack stages', the sanity checks' and
the rest's (scoring, start-up: the part that does not split), and the scaling model T(N) = split / N + rest.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _report import command_line, write_report

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(label: str, processes: int, threads: int, args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    """One evaluation from scratch (no kept stages): its wall time, stage times and outcomes."""
    out = scratch / label.replace(" ", "-")
    command = ["evaluate-detector", str(args.artifact), "--version", args.version, "--n", str(args.n),
               "--batch-size", str(args.batch_size), "--out", str(out), "--stages", str(scratch / f"{out.name}.stages")]
    launcher = ([str(BIN / "latentdefence")] if processes == 1 else
                [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={processes}", "--no-python",
                 "--", str(BIN / "latentdefence")])   # "--": torchrun would take --n for its own options
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "LATENTDEFENCE_PROGRESS": "0"}
    start = time.perf_counter()
    subprocess.run([*launcher, *command], check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    results = json.loads((out / "results.json").read_text())
    stages = results["wall_time_s"]
    attacks = sum(v for k, v in stages.items() if k.startswith("attack_"))
    sanity = stages.get("sanity_checks", 0.0)
    outcomes = {n: {"worst": d["all_attacks"]["broken_images"],
                    **{k: a["robustness"] for k, a in d["attacks"].items()}} for n, d in results["detectors"].items()}
    return {"label": label, "processes": processes, "threads": threads, "wall_s": wall, "attack_stages_s": attacks,
            "sanity_checks_s": sanity, "rest_s": wall - attacks - sanity, "outcomes": outcomes,
            "processes_recorded": results["processes"], "batch_size": results["budget"]["batch_size"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=ROOT / "docs/results/dld-mnist-table1/detector.safetensors")
    parser.add_argument("--n", type=int, default=64, help="test images attacked")
    parser.add_argument("--version", default="quick")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="the attacks' batch size (default n / nproc)")
    parser.add_argument("--out", type=Path, default=None, help="write report.md and results.json here")
    args = parser.parse_args()
    args.batch_size = args.batch_size or args.n // args.nproc
    load_before = os.getloadavg()
    scratch = Path(tempfile.mkdtemp(prefix="evaluate-scaling-"))
    try:
        rows = [run("1 process x 1 thread", 1, 1, args, scratch),
                run(f"1 process x {args.nproc} threads", 1, args.nproc, args, scratch),
                run(f"{args.nproc} processes x 1 thread", args.nproc, 1, args, scratch)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    base, threads, shards = rows
    same = all(r["outcomes"] == base["outcomes"] for r in rows)
    lines = [f"evaluate-detector {args.artifact.name}, version {args.version}, n {args.n}, batch {args.batch_size}, "
             f"{os.cpu_count()} cores, load average before {tuple(round(v, 2) for v in load_before)}"]
    for r in rows:
        lines.append(f"{r['label']:24s} wall {r['wall_s']:7.1f} s (attack stages {r['attack_stages_s']:6.1f} s, sanity "
                     f"checks {r['sanity_checks_s']:5.1f} s, rest {r['rest_s']:5.1f} s), speed-up vs 1 x 1 "
                     f"{base['wall_s'] / r['wall_s']:.2f}x")
    lines.append(f"{shards['label']} vs {threads['label']}: {threads['wall_s'] / shards['wall_s']:.2f}x "
                 f"(targets: >= 1.7x over 1 x 1: {base['wall_s'] / shards['wall_s']:.2f}x; faster than "
                 f"{args.nproc} threads: {threads['wall_s'] / shards['wall_s'] > 1})")
    lines.append(f"per-image outcomes equal in all three runs: {same}")
    split = {r["label"]: r["attack_stages_s"] + r["sanity_checks_s"] for r in rows}
    lines.append(f"scaling model from this run: T(N) = {split[base['label']]:.0f} s / N + {base['rest_s']:.0f} s "
                 f"(attack stages and sanity checks split; scoring and start-up do not); the split part measured "
                 f"{split[base['label']] / split[shards['label']]:.2f}x on {args.nproc} processes")
    lines.append(f"load average after {tuple(round(v, 2) for v in os.getloadavg())}")
    print("\n".join(lines))
    if args.out:
        write_report(args.out, "Sharded evaluation speed-up", command_line("evaluate_scaling.py"), args,
                     {"runs": rows, "same_outcomes": same}, lines)


if __name__ == "__main__":
    main()
