"""The guarded classifier, its audit log and batcher in-process; then the real `latentdefence serve` process on a
loopback port: every endpoint, every bad input, and no acknowledged audit record lost to kill -9."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from guard_artifact import artifact, blobs, guard, images  # noqa: F401 (shared fixtures)
from PIL import Image
from typer.testing import CliRunner

from latentdefence._io import load_tensors, save_tensors
from latentdefence.cli import app as cli_app
from latentdefence.dld import DeepLatentDefence
from latentdefence.serving import GuardedClassifier, InputError, MicroBatcher, SQLiteAuditLog, image_sha256
from latentdefence.serving.batching import Batched
from latentdefence.serving.process import launch_server, wait_until_healthy
from latentdefence.training import load_checkpoint

MAX_BODY, MAX_IMAGES = 120_000, 8





# -- in process -------------------------------------------------------------------------------------------
def test_three_lines_from_python_agree_with_the_detector(artifact: Path, images: dict[str, torch.Tensor]) -> None:
    guard = GuardedClassifier.load(artifact)
    x = torch.cat([images["clean"][:5], images["flagged"][:5]])
    out = guard.predict(x)
    det = DeepLatentDefence.load(artifact).predict(x)
    assert torch.equal(out.label, det.predicted) and torch.equal(out.is_adversarial, det.is_adversarial)
    assert torch.equal(out.nonconformity, det.nonconformity) and torch.equal(out.credibility, det.credibility)
    assert out.probabilities.shape == (10, 3) and torch.allclose(out.probabilities.sum(1), torch.ones(10))
    assert torch.equal(out.probabilities.argmax(1), out.label)
    assert out.is_adversarial[5:].all() and not out.is_adversarial[:5].any()
    row = out.rows()[7]
    assert set(row["per_layer"]) == {"conv1", "conv2"} and row["is_adversarial"] is True


@pytest.mark.parametrize("bad, message", [
    (torch.rand(2, 3, 28, 28), "3 channels"),
    (torch.rand(2, 1, 32, 28), "32x28"),
    (torch.rand(1, 28, 28), "(N, 1, 28, 28)"),
    (torch.zeros(0, 1, 28, 28), "non-empty"),
    ((torch.rand(2, 1, 28, 28) * 255).to(torch.uint8), "floating point"),
    (torch.full((2, 1, 28, 28), float("nan")), "NaN"),
    (torch.full((1, 1, 28, 28), float("inf")), "infinite"),
    (torch.rand(2, 1, 28, 28) + 1.0, "[0, 1]"),
])
def test_bad_images_raise_input_error_naming_the_problem(guard: GuardedClassifier, bad: torch.Tensor,
                                                          message: str) -> None:
    with pytest.raises(InputError) as err:
        guard.predict(bad)
    assert message in str(err.value)


def test_classifier_alone_exports_as_a_plain_checkpoint(guard: GuardedClassifier, tmp_path: Path) -> None:
    weights = guard.export_classifier(tmp_path / "plain")
    model, meta = load_checkpoint(weights)
    x = blobs(6, 9).images
    with torch.no_grad():
        assert torch.equal(model(x).argmax(1), guard.predict(x).label)
    assert meta["arch"] == "lenet5" and meta["detector_threshold"] == guard.detector.threshold_
    cli = CliRunner().invoke(cli_app, ["export-classifier", str(guard.source), "--out", str(tmp_path / "cli")])
    assert cli.exit_code == 0, cli.output
    exported = load_checkpoint(tmp_path / "cli")[0].state_dict()
    assert all(torch.equal(exported[k], v) for k, v in model.state_dict().items())


def test_knn_backend_is_chosen_at_load_and_old_artifacts_without_metadata_load(
        artifact: Path, images: dict[str, torch.Tensor], tmp_path: Path) -> None:
    approx = GuardedClassifier.load(artifact, knn_backend="faiss-hnsw")
    assert approx.info()["knn_backend"] == "faiss-hnsw"
    x = torch.cat([images["clean"], images["flagged"]])
    exact = GuardedClassifier.load(artifact).predict(x)
    assert (approx.predict(x).is_adversarial == exact.is_adversarial).float().mean() >= 0.9
    tensors, meta = load_tensors(artifact)
    old = tmp_path / "old.safetensors"
    save_tensors(old, tensors, {k: v for k, v in meta.items() if k != "metadata"})
    info = GuardedClassifier.load(old).info()
    assert info["git_revision"] is None and info["dataset"] is None and info["threshold"] == meta["threshold"]


def test_audit_log_round_trip_and_corrupt_file(tmp_path: Path) -> None:
    log = SQLiteAuditLog(tmp_path / "a.sqlite", keep_images=True)
    x = torch.rand(3, 1, 4, 4)
    ids = log.record(x, torch.tensor([0, 1, 2]), torch.tensor([7, 8, 9]), torch.tensor([0.1, 0.2, 0.3]),
                     {"l1": torch.tensor([3, 4, 5]), "l2": torch.tensor([4, 4, 4])}, 6.0, "m")
    assert ids == [1, 2, 3] and log.count() == 3
    rec = list(log.records(limit=2, since_id=1))
    assert [r.id for r in rec] == [2, 3] and rec[0].per_layer == {"l1": 4.0, "l2": 4.0}
    assert rec[0].sha256 == image_sha256(x[1]) and rec[1].predicted == 2 and rec[1].shape == [1, 4, 4]
    assert torch.equal(log.images([1, 3])[3], x[2])
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ValueError, match="not a usable audit database"):
        SQLiteAuditLog(bad)


def test_batcher_coalesces_concurrent_requests_and_keeps_order() -> None:
    calls: list[int] = []

    def double(x: torch.Tensor) -> list[float]:
        calls.append(len(x))
        return (2 * x.flatten(1)[:, 0]).tolist()

    async def run() -> list[Batched[float]]:
        batcher: MicroBatcher[float] = MicroBatcher(double, max_batch=8, max_wait_ms=20)
        await batcher.start()
        try:
            return await asyncio.gather(*[batcher.submit(torch.full((1 + i % 3, 1), float(i))) for i in range(10)])
        finally:
            await batcher.stop()

    batched = asyncio.run(run())
    assert [b.results for b in batched] == [[2.0 * i] * (1 + i % 3) for i in range(10)]
    assert all(b.batch_images >= len(b.results) and b.run_s >= 0 and b.wait_s >= 0 for b in batched)
    assert sum(calls) == 19 and max(calls) <= 8 and len(calls) <= 4


# -- the real server process --------------------------------------------------------------------------------
def _launch(artifact: Path, audit_db: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    log = audit_db.with_suffix(".log")
    return (*launch_server(artifact, "--audit-db", str(audit_db), "--threads", "1", *extra, log=log), log)


@pytest.fixture(scope="module")
def servers(artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[str, Path, Any]]]:
    """Two server processes started together (start-up is mostly imports): one to query, one to kill -9."""
    folder = tmp_path_factory.mktemp("audit")
    started = {"main": _launch(artifact, folder / "audit.sqlite", "--keep-images", "--max-body-bytes", str(MAX_BODY),
                               "--max-images", str(MAX_IMAGES), "--max-batch", "16", "--max-wait-ms", "30"),
               "victim": _launch(artifact, folder / "victim.sqlite", "--max-wait-ms", "5")}
    try:
        for proc, url, log in started.values():
            wait_until_healthy(proc, url, log)
        yield {name: (url, log.with_suffix(".sqlite"), proc) for name, (proc, url, log) in started.items()}
    finally:
        for proc, _, _ in started.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(servers: dict[str, tuple[str, Path, Any]]) -> tuple[str, Path]:
    url, db, _ = servers["main"]
    return url, db


def _png(image: torch.Tensor, mode: str | None = None, fmt: str = "PNG") -> bytes:
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    pil = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    buf = io.BytesIO()
    (pil.convert(mode) if mode else pil).save(buf, fmt)
    return buf.getvalue()


def _npy(array: np.ndarray, pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=pickle)
    return buf.getvalue()


def _post(url: str, content: bytes | str, content_type: str | None) -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return httpx.post(f"{url}/v1/predict", content=content, headers=headers, timeout=30)


def test_health_model_card_and_openapi(server: tuple[str, Path], guard: GuardedClassifier) -> None:
    url, _ = server
    assert httpx.get(f"{url}/healthz").json()["status"] == "ok"
    card = httpx.get(f"{url}/v1/model").json()
    assert card["architecture"] == "lenet5" and card["input_shape"] == [1, 28, 28] and card["num_classes"] == 3
    assert card["threshold"] == guard.detector.threshold_ and card["target_fpr"] == 0.1
    assert card["calibration_fpr"] == pytest.approx(guard.info()["calibration_fpr"]) and card["calibration_size"] == 150
    assert card["dataset"].startswith("blobs") and card["threat_model"] == {"norm": "linf", "eps": 0.3}
    assert card["git_revision"] and card["limits"]["max_images"] == MAX_IMAGES
    spec = httpx.get(f"{url}/openapi.json").json()
    assert {"/v1/predict", "/v1/model", "/healthz"} <= set(spec["paths"])
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert {"image/png", "image/jpeg", "application/json", "application/x-npy", "multipart/form-data"} <= set(body)


def test_predict_png_json_batch_and_multipart_match_in_process(server: tuple[str, Path], guard: GuardedClassifier,
                                                               images: dict[str, torch.Tensor]) -> None:
    url, _ = server
    x = torch.cat([images["clean"][:3], images["flagged"][:3]])
    expected = guard.predict(x).rows()
    first = _post(url, _png(x[0]), "image/png")
    one = first.json()["predictions"]
    assert {"read", "wait", "infer"} <= {part.split(";")[0].strip() for part in first.headers["server-timing"].split(",")}
    batch = _post(url, json.dumps({"images": x.tolist()}), "application/json").json()["predictions"]
    single = _post(url, json.dumps({"image": x[4].tolist()}), "application/json").json()["predictions"]
    files = [("files", (f"{i}.png", _png(img), "image/png")) for i, img in enumerate(x)]
    multi = httpx.post(f"{url}/v1/predict", files=files, timeout=30).json()["predictions"]
    npy = _post(url, _npy(x.numpy()), "application/x-npy").json()["predictions"]
    for got, want in [(one[0], expected[0]), (single[0], expected[4]), *zip(batch, expected), *zip(multi, expected),
                      *zip(npy, expected)]:
        assert got["label"] == want["label"] and got["is_adversarial"] == want["is_adversarial"]
        assert got["nonconformity"] == want["nonconformity"] and got["per_layer"] == want["per_layer"]
        assert got["credibility"] == pytest.approx(want["credibility"])
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
    assert [p["sha256"] for p in multi] == [image_sha256(img) for img in x]
    jpeg = Image.open(io.BytesIO(_png(x[1], fmt="JPEG")))
    decoded = torch.from_numpy(np.asarray(jpeg, dtype=np.float32) / 255).reshape(1, 1, 28, 28)
    got = _post(url, _png(x[1], fmt="JPEG"), "image/jpeg").json()["predictions"][0]
    assert got["label"] == int(guard.predict(decoded).label[0]) and got["sha256"] == image_sha256(decoded[0])


def test_flagged_inputs_are_audited_and_the_cli_lists_and_exports_them(
        server: tuple[str, Path], images: dict[str, torch.Tensor], tmp_path: Path) -> None:
    url, db = server
    x = torch.cat([images["clean"][:2], images["flagged"][:4]])
    rows = _post(url, json.dumps({"images": x.tolist()}), "application/json").json()["predictions"]
    assert [r["audit_id"] is not None for r in rows] == [r["is_adversarial"] for r in rows] == [False] * 2 + [True] * 4
    ids = [r["audit_id"] for r in rows[2:]]
    runner = CliRunner()
    listed = runner.invoke(cli_app, ["audit", "list", "--db", str(db), "--limit", "1000"])
    assert listed.exit_code == 0 and all(f"{r['sha256'][:16]}" in listed.output for r in rows[2:])
    out, pix = tmp_path / "flagged.jsonl", tmp_path / "flagged.safetensors"
    exported = runner.invoke(cli_app, ["audit", "export", "--db", str(db), "--out", str(out), "--images", str(pix)])
    assert exported.exit_code == 0, exported.output
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    for i, row, img in zip(ids, rows[2:], x[2:]):
        assert records[i]["sha256"] == row["sha256"] == image_sha256(img)
        assert records[i]["predicted"] == row["label"] and records[i]["nonconformity"] == row["nonconformity"]
    stored, _ = load_tensors(pix)
    where = {int(k): n for n, k in enumerate(stored["ids"])}
    assert all(torch.equal(stored["images"][where[i]], img) for i, img in zip(ids, x[2:]))
    missing = runner.invoke(cli_app, ["audit", "list", "--db", str(tmp_path / "nope.sqlite")])
    assert missing.exit_code == 2 and "no such audit log" in missing.output


def test_concurrent_requests_share_forward_passes(server: tuple[str, Path], images: dict[str, torch.Tensor]) -> None:
    url, _ = server
    before = httpx.get(f"{url}/healthz").json()
    bodies = [_png(images["clean"][i % len(images["clean"])]) for i in range(16)]
    start = threading.Barrier(16)                                            # all post at the same moment
    codes: list[int] = []
    with httpx.Client(timeout=30) as client:
        def send(body: bytes) -> None:
            start.wait()
            codes.append(client.post(f"{url}/v1/predict", content=body, headers={"content-type": "image/png"})
                         .status_code)
        threads = [threading.Thread(target=send, args=(body,)) for body in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    after = httpx.get(f"{url}/healthz").json()
    assert codes == [200] * 16 and after["requests"] - before["requests"] == 16
    assert after["forward_passes"] - before["forward_passes"] < 16


def _rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(3, -1, -1)


def _json_with(x: torch.Tensor, value: float) -> str:
    """JSON for one image whose first pixel is `value` (Python writes NaN / Infinity literals)."""
    pixels = x.tolist()
    pixels[0][0][0] = value
    return json.dumps({"image": pixels})


BAD_INPUTS = [
    ("png wrong size", lambda x: (_png(torch.rand(1, 32, 32)), "image/png"), 422, "32x32 (HxW), the model expects 28x28"),
    ("png rgb", lambda x: (_png(_rgb(x)), "image/png"), 422, "3 channels (RGB), the model expects 1"),
    ("png rgba", lambda x: (_png(x, "RGBA"), "image/png"), 422, "mode RGBA (4 channels)"),
    ("not an image", lambda x: (b"hello, world", "image/png"), 400, "not a PNG or JPEG image"),
    ("damaged png", lambda x: (_png(x)[:60], "image/png"), 400, "damaged PNG"),
    ("gif", lambda x: (_png(x, fmt="GIF"), "image/png"), 415, "GIF image; send PNG or JPEG"),
    ("empty png", lambda x: (b"", "image/png"), 400, "empty"),
    ("empty json", lambda x: (b"", "application/json"), 400, "empty"),
    ("invalid json", lambda x: (b"{images: [", "application/json"), 400, "not valid JSON"),
    ("json no key", lambda x: (json.dumps({"pixels": x.tolist()}), "application/json"), 422, 'exactly one of "image"'),
    ("json nan", lambda x: (_json_with(x, float("nan")), "application/json"), 422, "NaN or infinite"),
    ("json inf", lambda x: (_json_with(x, float("-inf")), "application/json"), 422, "NaN or infinite"),
    ("json over 1", lambda x: (json.dumps({"image": (x + 0.5).tolist()}), "application/json"), 422,
     "must lie in [0, 1]"),
    ("json negative", lambda x: (json.dumps({"image": (x - 0.5).tolist()}), "application/json"), 422,
     "must lie in [0, 1]"),
    ("json channels", lambda x: (json.dumps({"image": _rgb(x).tolist()}), "application/json"), 422,
     "3 channels, the model expects 1"),
    ("json size", lambda x: (json.dumps({"image": x[:, :20].tolist()}), "application/json"), 422, "20x28 (HxW)"),
    ("json dims", lambda x: (json.dumps({"images": x.tolist()}), "application/json"), 422, "must have 4 dimensions"),
    ("json ragged", lambda x: (json.dumps({"image": [[[0.1, 0.2], [0.3]]]}), "application/json"), 422,
     "rectangular nested array"),
    ("json strings", lambda x: (json.dumps({"image": [[["a", "b"]]]}), "application/json"), 422,
     "rectangular nested array"),
    ("npy not npy", lambda x: (b"PK\x03\x04 a zip file", "application/x-npy"), 400, "not a .npy file"),
    ("npy truncated", lambda x: (_npy(x.numpy())[:200], "application/x-npy"), 400, "not a readable .npy array"),
    ("npy pickled", lambda x: (_npy(np.array([{"a": 1}]), pickle=True), "application/x-npy"), 400,
     "not a readable .npy array"),
    ("npy integers", lambda x: (_npy((x.numpy() * 255).astype(np.uint8)), "application/x-npy"), 422,
     "floating point pixels in [0, 1], got dtype uint8"),
    ("npy 2-d", lambda x: (_npy(x[0].numpy()), "application/x-npy"), 422, "shaped (C, H, W) or (N, C, H, W)"),
    ("npy nan", lambda x: (_npy(np.full((1, 28, 28), np.nan, np.float32)), "application/x-npy"), 422, "NaN"),
    ("too many images", lambda x: (json.dumps({"images": torch.zeros(MAX_IMAGES + 1, *x.shape).tolist()}),
                                   "application/json"), 413, f"limit is {MAX_IMAGES}"),
    ("oversized body", lambda x: (b"0" * (MAX_BODY + 1), "application/json"), 413,
     f"exceeds the limit of {MAX_BODY} bytes"),
    ("text/plain", lambda x: (b"0.5", "text/plain"), 415, "unsupported content type 'text/plain'"),
    ("no content type", lambda x: (b"0.5", None), 415, "unsupported content type '(none)'"),
]


@pytest.mark.parametrize("name, make, status, message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_a_clear_4xx(server: tuple[str, Path], images: dict[str, torch.Tensor], name: str,
                                    make, status: int, message: str) -> None:  # type: ignore[no-untyped-def]
    url, _ = server
    response = _post(url, *make(images["clean"][0]))
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]


def test_chunked_oversized_body_multipart_limits_and_the_server_keeps_serving(
        server: tuple[str, Path], images: dict[str, torch.Tensor]) -> None:
    url, _ = server
    chunks = (b"0" * 10_000 for _ in range(20))                           # no Content-Length: streamed
    response = httpx.post(f"{url}/v1/predict", content=chunks, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "exceeds the limit" in response.json()["detail"]
    png = _png(images["clean"][0])
    too_many = [("files", (f"{i}.png", png, "image/png")) for i in range(MAX_IMAGES + 1)]
    response = httpx.post(f"{url}/v1/predict", files=too_many)
    assert response.status_code == 400 and "Too many files" in response.json()["detail"]
    response = httpx.post(f"{url}/v1/predict", data={"note": "no files"}, files=[("x", ("", b"", "text/plain"))])
    assert response.status_code == 400, response.text
    bad_part = [("files", ("a.png", png, "image/png")), ("files", ("b.png", b"junk", "image/png"))]
    response = httpx.post(f"{url}/v1/predict", files=bad_part)
    assert response.status_code == 400 and "file 'b.png' is not a PNG or JPEG" in response.json()["detail"]
    ok = _post(url, png, "image/png")
    assert ok.status_code == 200 and httpx.get(f"{url}/healthz").json()["status"] == "ok"


def test_kill_9_never_loses_an_acknowledged_audit_record(servers: dict[str, tuple[str, Path, Any]],
                                                         images: dict[str, torch.Tensor]) -> None:
    url, db, proc = servers["victim"]
    body = json.dumps({"images": images["flagged"][:2].tolist()})
    acknowledged: list[tuple[int, str]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                try:
                    r = c.post(f"{url}/v1/predict", content=body, headers={"content-type": "application/json"})
                except httpx.TransportError:
                    return                                                   # the server is gone
                if r.status_code == 200:
                    acknowledged.extend((p["audit_id"], p["sha256"]) for p in r.json()["predictions"])

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(acknowledged) < 40 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)                                        # requests are in flight now
    proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=15)
    assert len(acknowledged) >= 40 and all(i is not None for i, _ in acknowledged)
    with sqlite3.connect(db) as conn:
        stored = dict(conn.execute("SELECT id, sha256 FROM flagged").fetchall())
    assert all(stored.get(i) == sha for i, sha in acknowledged)
    assert len(stored) >= len(acknowledged)                                  # records may exceed answers, never the reverse
