"""Issue 40: a detector evaluation split over processes (torch.distributed, gloo) gives one process's per-image
outcomes, and neither depends on the batch size: every random draw is made per image (`ImageStreams`)."""

from __future__ import annotations

import json
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

THREAT = ThreatModel("linf", 0.3)


def _evaluate(batch_size: int, workers: Workers | None = None) -> dict:
    """The test evaluation: two user detectors on one tiny F, every attack, the tiny budget at `batch_size`."""
    model, (x, y, cal) = tiny_model(), data()
    dets = {"softmax": SoftmaxDetector(model).calibrate(cal), "flat": SoftmaxDetector(model, True).calibrate(cal)}
    ev = evaluate_detectors(dets, x, y, THREAT, budget=replace(TINY, batch_size=batch_size), calibration=cal,
                            seed=5, sanity=["softmax"], workers=workers)
    return {"results": ev.results}


def _rank(rank: int, world: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        found = _evaluate(batch_size=7, workers=Workers(rank, world))
        Path(f"{out}.{rank}").write_text(json.dumps(found))
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
    except RuntimeError as err:
        Path(f"{out}.{rank}").write_text(str(err))
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
    """Per-image outcomes (which images each attack and the worst case break, every rate, the sanity checks) are equal.
    The adversarial images themselves may differ in the last bits where BLAS sums in another order for another batch
    size (measured on this test: orthogonal PGD, 3 of 24 images), so they are not compared."""
    one = _evaluate(batch_size=32)
    other_batch = _evaluate(batch_size=5)
    mp.spawn(_rank, args=(2, str(tmp_path / "store"), str(tmp_path / "found")), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"found.{r}").read_text()) for r in range(2)]
    assert outcomes(one)["detectors"]["softmax"]["worst"], "the tiny budget must break some images to compare"
    for found in (other_batch, *ranks):
        assert outcomes(found) == outcomes(one)
    assert ranks[0]["results"]["processes"] == 2 and one["results"]["processes"] == 1


def test_processes_holding_different_detectors_refuse_to_evaluate(tmp_path: Path) -> None:
    mp.spawn(_mismatched, args=(2, str(tmp_path / "store"), str(tmp_path / "error")), nprocs=2, join=True)
    for rank in range(2):
        assert "processes hold different evaluation" in (tmp_path / f"error.{rank}").read_text()


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
    assert [Workers(r, 3).rows(10) for r in range(3)] == [slice(0, 3), slice(3, 6), slice(6, 10)]
