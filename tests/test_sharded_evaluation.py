"""Issue 40: a detector evaluation split over processes (torch.distributed, gloo) gives one process's per-image
outcomes, and neither depends on the batch size: every random draw is made per image (`ImageStreams`)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_attacks_fixtures import one_thread, tiny_model  # noqa: F401 (autouse)
from test_detector_eval import TINY, SoftmaxDetector, data

from latentdefence.attacks import PGD, ImageStreams, Square
from latentdefence.evaluation import ThreatModel, Workers, evaluate_detectors
from latentdefence.experiments import run_experiment

THREAT = ThreatModel("linf", 0.3)


def _evaluate(batch_size: int, workers: Workers | None = None) -> dict:
    """The test evaluation: two user detectors on one tiny F, every attack, the tiny budget at `batch_size`."""
    model, (x, y, cal) = tiny_model(), data()
    dets = {"softmax": SoftmaxDetector(model).calibrate(cal), "flat": SoftmaxDetector(model, True).calibrate(cal)}
    ev = evaluate_detectors(dets, x, y, THREAT, budget=replace(TINY, batch_size=batch_size), calibration=cal,
                            seed=5, sanity=["softmax"], workers=workers)
    return {"results": ev.results, "sets": ev.images}


def _rank(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        found = _evaluate(batch_size=7, workers=Workers(rank, world))
        Path(f"{out}.{rank}").write_text(json.dumps(found["results"]))
        torch.save(found["sets"], f"{out}.{rank}.pt")
    finally:
        dist.destroy_process_group()


def _mismatched(rank: int, world: int, store: str, out: str) -> None:
    """Rank 1 holds another detector (calibrated at another FP rate): every process must refuse, not attack."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        model, (x, y, cal) = tiny_model(), data()
        det = SoftmaxDetector(model).calibrate(cal, target_fpr=0.05 if rank == 0 else 0.2)
        evaluate_detectors({"softmax": det}, x, y, THREAT, budget=TINY, calibration=cal, sanity=(),
                           workers=Workers(rank, world))
    except Exception as err:             # any error is written, so a failure shows which one this rank met
        Path(f"{out}.{rank}").write_text(f"{type(err).__name__}: {err}")
    finally:
        dist.destroy_process_group()


def outcomes(found: dict) -> dict:
    """Per detector and attack, which images are broken, and the worst case's; F alone's; the sanity checks."""
    res = found["results"]
    per = {n: {"worst": d["all_attacks"]["broken_images"], "paper": d["paper_attacks"]["broken_images"],
               **{k: a["robustness"] for k, a in d["attacks"].items()}} for n, d in res["detectors"].items()}
    return {"detectors": per, "alone": res["classifier_alone_broken_images"], "after": res["classifier_alone"],
            "sanity": res["sanity"]}


def test_two_processes_and_two_batch_sizes_give_one_process_s_outcomes(tmp_path: Path) -> None:
    """Two processes at batch size 7 give one process's adversarial images at batch size 7 bit for bit (each process
    takes whole batches, so every batch holds the same images). Per-image outcomes (which images each attack and the
    worst case break, every rate, the sanity checks) are also equal at batch sizes 32 and 5, whose adversarial images
    may differ in the last bits where BLAS sums in another order (orthogonal PGD's sign step), so there only the
    outcomes are compared."""
    same_batch = _evaluate(batch_size=7)
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(tmp_path / "found")), nprocs=2, join=True)
    ranks = [{"results": json.loads((tmp_path / f"found.{r}").read_text())} for r in range(2)]
    for r in range(2):
        sets = torch.load(tmp_path / f"found.{r}.pt")
        assert sets.keys() == same_batch["sets"].keys()
        for name, kinds in sets.items():
            for kind, images in kinds.items():
                assert torch.equal(images, same_batch["sets"][name][kind]), (r, name, kind)
    assert outcomes(same_batch)["detectors"]["softmax"]["worst"], "the tiny budget must break some images to compare"
    for found in (_evaluate(batch_size=32), _evaluate(batch_size=5), *ranks):
        assert outcomes(found) == outcomes(same_batch)
    assert ranks[0]["results"]["processes"] == 2 and same_batch["results"]["processes"] == 1


def test_processes_holding_different_detectors_refuse_to_evaluate(tmp_path: Path) -> None:
    mp.spawn(_mismatched, args=(2, str(tmp_path / "store"), str(tmp_path / "error")), nprocs=2, join=True)
    for rank in range(2):
        said = (tmp_path / f"error.{rank}").read_text()
        assert said.startswith("RuntimeError: ") and "processes hold different evaluation" in said, said


def test_an_image_draws_the_same_random_numbers_in_any_batch() -> None:
    x = torch.rand(6, 1, 12, 12)
    model = tiny_model()
    y = model(x).argmax(1)
    whole = PGD(0.3, steps=2, restarts=2, generator=ImageStreams(0, "s"))(model, x, y).images
    parts = torch.cat([PGD(0.3, steps=2, restarts=2, generator=ImageStreams(0, "s"))(model, x[i:i + 1], y[i:i + 1]).images
                       for i in range(6)])
    assert torch.equal(whole, parts)
    square = Square(0.3, queries=20, generator=ImageStreams(0, "s"))
    assert torch.equal(square(model, x, y).images, torch.cat([square(model, x[[i]], y[[i]]).images for i in range(6)]))
    other = PGD(0.3, steps=2, generator=ImageStreams(1, "s"))(model, x, y).images
    assert not torch.equal(whole, other)                             # the seed matters


def test_without_torchrun_there_is_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert Workers.from_environment() is None
    assert [Workers(r, 3).rows(10, 3) for r in range(3)] == [slice(0, 3), slice(3, 6), slice(6, 10)]  # whole batches
    assert [Workers(r, 2).rows(10, 4) for r in range(2)] == [slice(0, 4), slice(4, 10)]
    with pytest.raises(ValueError, match="10 images at batch size 5 make 2; lower the batch size to at most 3"):
        Workers(0, 3).rows(10, 5)


SMOKE = ["baselines=mahalanobis", "attacks.eps=0.5", "attacks.batch_size=3", "attacks.n=6", "attacks.n_masking=4",
         "attacks.eps_sweep=0.3"]       # eps 0.5: the committed F is broken on some of the 6 images


def test_reproduce_split_over_two_processes_builds_once_and_gives_one_process_s_outcomes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`reproduce --nproc 2` starts two torchrun processes: rank 0 trains and caches DLD's stages while rank 1 waits,
    then loads them; only rank 0 writes the results folder; one process from the same cache breaks the same images."""
    from typer.testing import CliRunner

    from latentdefence.cli import app

    monkeypatch.setenv("LATENTDEFENCE_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    run = CliRunner().invoke(app, ["reproduce", "dld-mnist-adaptive", "--profile", "smoke", "--nproc", "2",
                                   "--out", str(tmp_path / "two"), *[f"--set={s}" for s in SMOKE]])
    assert run.exit_code == 0, run.output
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    one = run_experiment("dld-mnist-adaptive", "smoke", tmp_path / "one", overrides=SMOKE)
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["built_from_scratch"] and not one["built_from_scratch"]   # rank 0 built the stages, once
    found = outcomes({"results": two})
    assert any(d["worst"] for d in found["detectors"].values()), "the smoke budget must break some images to compare"
    assert found == outcomes({"results": one})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "runs", "two"]   # nothing from rank 1


def test_reproduce_refuses_nproc_for_experiments_that_do_not_split(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from latentdefence.cli import app

    for nproc, said in (("2", "lad-mnist-table2 does not split over processes; --nproc works for dld-mnist-adaptive, "
                              "dld-cifar10-adaptive"),
                        ("0", "--nproc must be >= 1")):
        run = CliRunner().invoke(app, ["reproduce", "lad-mnist-table2", "--profile", "smoke", "--nproc", nproc,
                                       "--out", str(tmp_path / "out")])
        assert run.exit_code == 2 and said in run.output, run.output
    assert not (tmp_path / "out").exists()
