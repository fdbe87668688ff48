"""Load on the guarded HTTP service (`latentdefence serve`) against in-process `GuardedClassifier.predict`, one run.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/serve.py [--requests 3000] [--clients 8] [--batches 16]
     [--artifact PATH] [--knn-backend sklearn|faiss|faiss-hnsw] [--out docs/results/archive/serve-benchmark]
Targets: zero 5xx, audit records == flagged responses exactly, and guarded predictions/s of the server at
batch 64 >= 0.8x of in-process `GuardedClassifier.predict` on the same images (loopback only, bounded).

Without --artifact a realistic MNIST detector is built once and cached (stage "serve-bench-detector"):
the committed PGD-trained classifier (docs/results/dld-mnist-table1), encoders on layer1-3 trained
clean for 1 epoch on 6k images, indexes over the full pruned training set, calibrated at 2% FPR on 750
test images. Sizes set the cost here, not encoder quality. Traffic: held-out test images, a quarter of
them FGSM (eps 0.3) against the classifier, so that some requests are flagged.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sqlite3
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

os.environ.setdefault("LATENTDEFENCE_PROGRESS", "0")

from _report import command_line, write_report  # noqa: E402
from latentdefence._io import git_revision, sha256_file  # noqa: E402
from latentdefence.attacks import FGSM  # noqa: E402
from latentdefence.data import load_dataset  # noqa: E402
from latentdefence.dld import DeepLatentDefence, EncoderTrainConfig  # noqa: E402
from latentdefence.experiments.cache import ensure_stage  # noqa: E402
from latentdefence.data import calibration_split  # noqa: E402
from latentdefence.serving import GuardedClassifier, SQLiteAuditLog  # noqa: E402
from latentdefence.serving.process import start_server  # noqa: E402
from latentdefence.training import load_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = ROOT / "docs" / "results" / "dld-mnist-table1" / "classifier"


def build_artifact() -> Path:
    """The cached benchmark detector (see the module docstring)."""
    weights = CLASSIFIER.with_suffix(".safetensors")
    settings = {"classifier_sha256": sha256_file(weights), "taps": ["layer1", "layer2", "layer3"], "epochs": 1,
                "max_train": 6000, "target_fpr": 0.02, "n_calibration": 750}

    def build(folder: Path) -> None:
        mnist = load_dataset("mnist")
        cal, _ = calibration_split(mnist.test, settings["n_calibration"], seed=0)
        training = EncoderTrainConfig(epochs=1, adversarial=False, max_train=settings["max_train"])
        det = DeepLatentDefence(load_checkpoint(weights)[0].eval(), settings["taps"], training=training)
        det.fit(mnist.train).calibrate(cal, target_fpr=settings["target_fpr"])
        det.save(folder / "detector.safetensors", metadata={"dataset": "mnist", "threat_model": {
            "norm": "linf", "eps": 0.3, "note": "classifier PGD-trained at eps 0.3; encoders trained clean"}})

    return ensure_stage("serve-bench-detector", settings, build) / "detector.safetensors"


def traffic(guard: GuardedClassifier, n: int, seed: int = 0) -> torch.Tensor:
    """n held-out test images (8-bit exact, as PNG carries them), the first quarter FGSM-perturbed, shuffled."""
    _, held_out = calibration_split(load_dataset("mnist").test, 750, seed=0)
    x, y = held_out.images[:n], held_out.labels[:n]
    adv = FGSM(0.3)(guard.classifier, x[:n // 4], y[:n // 4]).images
    x = torch.cat([adv, x[n // 4:]])
    x = (x * 255).round() / 255                                        # what a PNG of the image decodes to
    return x[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def png(image: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8), "L").save(buf, "PNG")
    return buf.getvalue()


def npy(images: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, images.numpy())
    return buf.getvalue()


def multipart(files: list[bytes], boundary: str = "latentdefence-bench-boundary") -> dict[str, Any]:
    """A multipart/form-data body with one PNG part per file, encoded once (the client's cost is not measured)."""
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{i}.png"\r\n'
             f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n" for i, data in enumerate(files)]
    return {"content": b"".join(parts) + f"--{boundary}--\r\n".encode(),
            "headers": {"content-type": f"multipart/form-data; boundary={boundary}"}}


def run_clients(client: Callable[[int], None], clients: int) -> float:
    """Seconds for `clients` threads running client(0..clients-1) to finish."""
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def load_test(url: str, bodies: list[bytes], requests: int, clients: int) -> dict[str, Any]:
    """`requests` single-image PNG posts from `clients` threads: throughput, latency, status counts, flags."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    flagged = [0]
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(timeout=60) as c:
            for i in range(index, requests, clients):
                start = time.perf_counter()
                r = c.post(f"{url}/v1/predict", content=bodies[i % len(bodies)], headers={"content-type": "image/png"})
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        flagged[0] += sum(p["is_adversarial"] for p in r.json()["predictions"])

    wall = run_clients(client, clients)
    q = statistics.quantiles(latencies, n=100)
    return {"requests": requests, "clients": clients, "wall_s": round(wall, 2), "requests_per_s": requests / wall,
            "p50_ms": 1e3 * statistics.median(latencies), "p99_ms": 1e3 * q[98], "statuses": statuses,
            "server_errors": sum(v for k, v in statuses.items() if k >= 500), "flagged_responses": flagged[0]}


def payload(images: torch.Tensor, form: str) -> dict[str, Any]:
    """A POST of a batch as multipart PNG files, one .npy array or JSON, encoded once (not timed)."""
    if form == "png":
        return multipart([png(img) for img in images])
    if form == "npy":
        return {"content": npy(images), "headers": {"content-type": "application/x-npy"}}
    return {"content": json.dumps({"images": images.tolist()}), "headers": {"content-type": "application/json"}}


def paired_rates(guard: GuardedClassifier, url: str, batches: list[torch.Tensor], forms: list[str],
                 repeats: int) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Predictions/s in-process and through the server (one client per form), batch by batch in turn;
    and per form where a request's time went (ms per batch, from the server's Server-Timing header).

    Each batch is predicted in-process and then posted in every form before the next batch, so every
    mode sees the same moments of a shared machine's load; a mode's rate is its images over its total time.
    """
    bodies = {form: [payload(b, form) for b in batches] for form in forms}
    seconds = dict.fromkeys(["in_process", *forms], 0.0)
    parts = {form: dict.fromkeys(["read", "wait", "infer"], 0.0) for form in forms}
    with httpx.Client(timeout=120) as client:
        for _ in range(repeats):
            for i, b in enumerate(batches):
                start = time.perf_counter()
                guard.predict(b)
                seconds["in_process"] += time.perf_counter() - start
                for form in forms:
                    start = time.perf_counter()
                    r = client.post(f"{url}/v1/predict", **bodies[form][i])
                    seconds[form] += time.perf_counter() - start
                    assert r.status_code == 200, r.text
                    for part in r.headers["server-timing"].split(","):
                        name, dur = part.strip().split(";")[:2]
                        parts[form][name] += float(dur.removeprefix("dur="))
    images, n = repeats * sum(len(b) for b in batches), repeats * len(batches)
    breakdown = {form: {"in_process_predict": 1e3 * seconds["in_process"] / n, "round_trip": 1e3 * seconds[form] / n,
                        **{k: v / n for k, v in parts[form].items()}} for form in forms}
    for row in breakdown.values():
        row["http_and_response"] = row["round_trip"] - row["read"] - row["wait"] - row["infer"]
    return {mode: images / t for mode, t in seconds.items()}, breakdown


def cpu_per_batch(guard: GuardedClassifier, url: str, pid: int, batches: list[torch.Tensor]) -> dict[str, float]:
    """CPU ms per batch: in-process predict (this thread's clock) and the whole server process (Linux /proc)
    answering the same batches as .npy; on a shared machine CPU time, unlike wall time, is not inflated by waiting."""
    bodies = [payload(b, "npy") for b in batches]
    in_process = 0.0
    for b in batches:
        start = time.thread_time()
        guard.predict(b)
        in_process += time.thread_time() - start
    before = _process_cpu_s(pid)
    with httpx.Client(timeout=120) as client:
        for body in bodies:
            assert client.post(f"{url}/v1/predict", **body).status_code == 200
    server = _process_cpu_s(pid) - before
    return {"in_process_predict_ms": 1e3 * in_process / len(batches), "server_process_ms": 1e3 * server / len(batches)}


def _process_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()     # fields 3.. of proc(5)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")          # utime + stime


def concurrent_rate(url: str, batches: list[torch.Tensor], form: str, clients: int) -> float:
    """Predictions/s when `clients` threads post the batches at once (decoding overlaps inference)."""
    bodies = [payload(b, form) for b in batches]

    def client(index: int) -> None:
        with httpx.Client(timeout=120) as c:
            for i in range(index, len(bodies), clients):
                r = c.post(f"{url}/v1/predict", **bodies[i])
                assert r.status_code == 200, r.text

    return sum(len(b) for b in batches) / run_clients(client, clients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=None)
    parser.add_argument("--knn-backend", default=None, help="override the artifact's k-NN backend (both sides)")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--batches", type=int, default=16, help="batches of 64 images for the throughput ratio")
    parser.add_argument("--repeats", type=int, default=3, help="passes over the batches")
    parser.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = parser.parse_args()
    load_before = os.getloadavg()
    artifact = args.artifact or build_artifact()
    guard = GuardedClassifier.load(artifact, knn_backend=args.knn_backend)
    images = traffic(guard, max(1000, 64 * args.batches))
    bodies = [png(img) for img in images[:1000]]
    batches = list(images[:64 * args.batches].split(64))
    print(f"artifact {artifact}")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "audit.sqlite"
        proc, url = start_server(artifact, "--audit-db", str(db), "--max-batch", "64", "--threads",
                                 str(torch.get_num_threads()), *(["--knn-backend", args.knn_backend]
                                                                 if args.knn_backend else []), timeout_s=120)
        try:
            paired_rates(guard, url, batches[:2], ["npy"], 1)                       # warm-up both sides
            rates, breakdown = paired_rates(guard, url, batches, ["png", "npy", "json"], args.repeats)
            concurrent = {f"{form}_2_clients": concurrent_rate(url, batches, form, 2) for form in ("png", "npy")}
            cpu = cpu_per_batch(guard, url, proc.pid, batches)
            audit_before = _audit_count(db)
            load = load_test(url, bodies, args.requests, args.clients)
            load["audit_records"] = _audit_count(db) - audit_before
            flagged_batches = sum(bool(guard.predict(b).is_adversarial.any()) for b in batches)
            commit_ms = audit_commit_ms(Path(tmp), images[0])
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    ratios = {k: v / rates["in_process"] for k, v in {**rates, **concurrent}.items() if k != "in_process"}
    lines = [
        f"torch threads {torch.get_num_threads()}, k-NN {guard.detector.knn_backend}, git {git_revision()}",
        f"load: {load['requests']} requests from {load['clients']} clients in {load['wall_s']} s: "
        f"{load['requests_per_s']:.0f} req/s, p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms, "
        f"statuses {load['statuses']}, 5xx {load['server_errors']}",
        f"audit: {load['audit_records']} records for {load['flagged_responses']} flagged responses "
        f"({'equal' if load['audit_records'] == load['flagged_responses'] else 'MISMATCH'})",
        f"batch 64, {args.batches} batches x {args.repeats} repeats, paired batch by batch: in-process "
        f"{rates['in_process']:.0f} pred/s; server " + ", ".join(
            f"{k} {v * rates['in_process']:.0f} pred/s ({v:.2f}x)" for k, v in ratios.items()) + " (target >= 0.8x; "
        "2_clients: two concurrent clients, timed apart from the pairing)",
        "ms per batch of 64: in-process predict | server: round trip = read+decode+check, queue wait, "
        "inference+audit, HTTP+response",
        *(f"  {form:5s} {row['in_process_predict']:6.1f} | {row['round_trip']:6.1f} = {row['read']:5.1f} + "
          f"{row['wait']:4.1f} + {row['infer']:6.1f} + {row['http_and_response']:5.1f}" for form, row in breakdown.items()),
        f"one durable audit commit (fsync) {commit_ms:.1f} ms; {flagged_batches} of {len(batches)} batches "
        "hold a flagged image and pay it (in the server's inference+audit, not in-process)",
        f"CPU per batch of 64 (.npy): in-process predict {cpu['in_process_predict_ms']:.1f} ms, whole server process "
        f"{cpu['server_process_ms']:.1f} ms",
        f"load average (1, 5, 15 min) before {tuple(round(v, 2) for v in load_before)}, "
        f"after {tuple(round(v, 2) for v in os.getloadavg())} on {os.cpu_count()} cores",
    ]
    print("\n".join(lines))
    if args.out:
        write_report(args.out, "Serving benchmark", command_line("serve.py", "OMP_NUM_THREADS=1 "), args, {
            "artifact": str(artifact), "artifact_sha256": sha256_file(artifact),
            "knn_backend": guard.detector.knn_backend,
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "load_test": load, "batch64_pred_per_s": {**rates, **concurrent}, "batch64_ratio": ratios,
            "batch64_ms_breakdown": breakdown, "audit_commit_ms": commit_ms, "batches_with_flags": flagged_batches,
            "cpu_ms_per_batch": cpu}, lines)

def audit_commit_ms(folder: Path, image: torch.Tensor, repeats: int = 20) -> float:
    """Median ms of one durable audit commit (one record, WAL + synchronous=FULL) in `folder`'s file system."""
    log = SQLiteAuditLog(folder / "commit-probe.sqlite")
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        log.record(image[None], torch.tensor([0]), torch.tensor([1]), torch.tensor([0.5]), {"t": torch.tensor([1])},
                   1.0, "probe")
        times.append(1e3 * (time.perf_counter() - start))
    log.close()
    return statistics.median(times)


def _audit_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM flagged").fetchone()[0])


if __name__ == "__main__":
    main()
