"""`latentdefence evaluate-detector`: a saved detector of any registered kind under every attack that applies (thin
over `experiments.dld_adaptive.evaluate_artifact`, i.e. `evaluation.evaluate_detector`); `compare-evaluations`:
several such runs in one table (`evaluation.compare`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..validation import check_output
from .errors import cli_errors


def register(app: typer.Typer) -> None:
    """Add `evaluate-detector`, `compare-evaluations` and `leaderboard` to the main app."""
    app.command("evaluate-detector")(evaluate_detector)
    app.command("compare-evaluations")(compare_evaluations)
    app.command("leaderboard")(leaderboard)


def evaluate_detector(
    artifact: Path = typer.Argument(..., help="Detector artifact of any registered detector (DeepLatentDefence.save, "
                                    "DeepKNN.save, ...); for DLD, encoders.safetensors beside it enables the paper's "
                                    "adaptive attack."),
    dataset: str = typer.Option("mnist", help="Dataset whose test split is attacked (calibration images held out)."),
    norm: str = typer.Option("linf", help="linf | l2"),
    eps: float = typer.Option(0.3, help="Radius of the threat model's ball."),
    version: str = typer.Option("standard", help="quick | standard | thorough (budgets listed in the report)."),
    n: int = typer.Option(500, help="Test images attacked."),
    batch_size: Optional[int] = typer.Option(None, help="The attacks' batch size (default: the version's, 250); "
                                             "split over N processes, each takes whole batches: at most n / N."),
    n_calibration: int = typer.Option(750, help="Held-out clean test images that set the SR@FPR thresholds."),
    budget_check: bool = typer.Option(False, help="Re-run every attack at twice the steps and restarts."),
    data_dir: Optional[Path] = typer.Option(None, help="Your copy of the dataset (not needed for MNIST)."),
    seed: int = typer.Option(0),
    out: Path = typer.Option(Path("runs/evaluate-detector"), help="Folder for results.json, report.md, figures."),
    stages: Optional[Path] = typer.Option(None, help="Folder keeping each finished attack stage (default: one per "
                                          "set of these options under runs/cache): the same command run again "
                                          "continues from it."),
) -> None:
    """Evaluate a detector like an attacker would: per-image worst case over every attack, sanity-check warnings.
    Under `torchrun --nproc-per-node N` the images are split over N processes (same results; rank 0 writes)."""
    with cli_errors():
        check_output(out, "folder", [artifact])
        from ..evaluation import ThreatModel, Workers
        from ..experiments.cache import default_cache_root, settings_key
        from ..experiments.dld_adaptive import evaluate_artifact

        workers = Workers.from_environment()
        options = {"artifact": artifact.resolve(), "dataset": dataset, "norm": norm, "eps": eps, "version": version,
                   "n": n, "n_calibration": n_calibration, "budget_check": budget_check, "seed": seed,
                   **({"batch_size": batch_size} if batch_size is not None else {})}
        kept = stages or default_cache_root() / f"evaluate-detector-stages-{settings_key(options)}"
        evaluation = evaluate_artifact(artifact, ThreatModel(norm, eps), version, dataset=dataset, n=n,
                                       n_calibration=n_calibration, seed=seed, budget_check=budget_check,
                                       data_dir=data_dir, resume=kept, workers=workers, batch_size=batch_size)
        if workers is None or workers.leader:
            typer.echo((evaluation.write(out) / "report.md").read_text())


def compare_evaluations(
    runs: list[str] = typer.Argument(..., help="LABEL=FOLDER of each run's results.json (evaluate-detector or "
                                     "reproduce dld-mnist-adaptive), e.g. k30=runs/adaptive-k30."),
    out: Path = typer.Option(Path("runs/compare"), help="Folder for results.json, report.md, worst_case_vs_fpr.png."),
    different_classifiers: bool = typer.Option(False, help="Admit runs on different classifiers (F variants); "
                                               "each is read against its own F alone."),
    different_budgets: bool = typer.Option(False, help="The budget check: one evaluation at a cheaper budget (first) "
                                           "and larger ones, paired on the images all of them attacked."),
) -> None:
    """One table and figure of detector variants, refused unless the runs share budget, images and classifier
    (or, with --different-budgets, everything but the budget)."""
    with cli_errors():
        check_output(out / "results.json", "file", [Path(run.split("=", 1)[-1]) / "results.json" for run in runs])
        from ..evaluation.compare import compare_runs, load_run, write_comparison

        pairs = [run.split("=", 1) for run in runs]
        bad = [run for run, pair in zip(runs, pairs) if len(pair) != 2 or not all(pair)]
        if bad:
            raise ValueError(f"expected LABEL=FOLDER, got {', '.join(bad)}")
        labels = [label for label, _ in pairs]
        if len(set(labels)) < len(labels):
            raise ValueError(f"each run needs its own label, got {', '.join(labels)}")
        loaded = {label: load_run(folder) for label, folder in pairs}
        if different_budgets:
            from ..evaluation.budgets import compare_budgets, write_budget_comparison

            typer.echo((write_budget_comparison(compare_budgets(loaded), out) / "report.md").read_text())
            return
        typer.echo((write_comparison(compare_runs(loaded, not different_classifiers), out) / "report.md").read_text())


def leaderboard(
    results: Path = typer.Option(Path("docs/results"), help="Folder with catalog.toml and the results folders."),
    out: Path = typer.Option(Path("docs/leaderboard.md"), help="The page (its figure, leaderboard.png, beside it)."),
) -> None:
    """Rank every registered detector's committed release evaluation per dataset, F alone as the floor."""
    with cli_errors():
        check_output(out, "file", [results / "catalog.toml"])
        from ..evaluation.leaderboard import write_leaderboard

        write_leaderboard(results, out)
        typer.echo(f"wrote {out} and {out.with_name('leaderboard.png')}")
