"""`latentdefence reproduce` and `latentdefence demo`: one command per paper experiment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..validation import check_output
from .errors import cli_errors


def register(app: typer.Typer) -> None:
    """Add `reproduce` and `demo` to the main app."""
    app.command("reproduce")(reproduce)
    app.command("demo")(demo)


def reproduce(
    experiment: str = typer.Argument("", help="Experiment name; leave empty (or use --list) to list them."),
    profile: str = typer.Option("cpu", help="smoke (seconds) | demo (~10 min) | cpu (~1 h, 2 cores) | paper (GPU)"),
    out: Optional[Path] = typer.Option(None, help="Output folder (default: runs/<experiment>-<profile>)."),
    data_dir: Optional[Path] = typer.Option(None, help="Your copy of SVHN, CIFAR-10 or CelebA (default: $LATENTDEFENCE_DATA_DIR; not needed for MNIST)."),
    classifier: Optional[Path] = typer.Option(None, help="DLD only: use this adversarially trained checkpoint."),
    set_: list[str] = typer.Option([], "--set", help="Change a setting of the profile, KEY=VALUE (repeat); e.g. "
                                   "--set attack.pgd_steps=40 --set boundary_eps=8. Recorded in results.json."),
    list_: bool = typer.Option(False, "--list", help="List the experiments and exit."),
    nproc: int = typer.Option(1, "--nproc", help="Split the run over N processes on this machine (torchrun, one "
                              "thread each); the adaptive evaluations split, giving one process's results."),
) -> None:
    """Re-run a table or figure of either paper; writes results.json, report.md and PNG figures."""
    from ..experiments import EXPERIMENTS, experiment_config, run_experiment

    if list_ or not experiment:
        for exp in EXPERIMENTS.values():
            typer.echo(f"{exp.name:18s} {exp.reproduces}{'  [--data-dir]' if exp.needs_data_dir else ''}")
        return
    with cli_errors():
        target = out or Path("runs") / f"{experiment}-{profile}"
        check_output(target, "folder", [classifier])
        if nproc != 1:
            experiment_config(experiment, profile, data_dir, classifier, set_)   # every setting checked first
            _launch(experiment, nproc, ["--profile", profile, "--out", str(target),
                                        *(["--data-dir", str(data_dir)] if data_dir else []),
                                        *(["--classifier", str(classifier)] if classifier else []),
                                        *[f"--set={s}" for s in set_]])
            return
        run_experiment(experiment, profile, target, data_dir, classifier, set_)
        if os.environ.get("RANK", "0") == "0":          # under torchrun rank 0 alone writes the results folder
            typer.echo((target / "report.md").read_text())
            typer.echo(f"results: {target / 'results.json'}")


def _launch(experiment: str, nproc: int, options: list[str]) -> None:
    """`reproduce EXPERIMENT OPTIONS` again in `nproc` processes under torchrun, once the experiment is known to split."""
    import subprocess

    from ..evaluation.workers import torchrun_command
    from ..experiments import check_splits

    command = torchrun_command(nproc, ["reproduce", experiment, *options])   # refuses nproc < 1
    if os.environ.get("WORLD_SIZE", "1") != "1":
        raise ValueError("--nproc under torchrun: this process is already one of several; drop --nproc")
    check_splits(experiment)
    done = subprocess.run(command, check=False)
    if done.returncode:
        raise typer.Exit(done.returncode)


def demo(out: Path = typer.Option(Path("runs/demo"), help="Output folder.")) -> None:
    """The main job: Deep Latent Defence end to end on embedded MNIST at a small scale (~10 min on 2 cores)."""
    reproduce("dld-mnist-table1", profile="demo", out=out, data_dir=None, classifier=None, set_=[], list_=False)
