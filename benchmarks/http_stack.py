"""Which HTTP stack `latentdefence serve` should run on (issue 38 item 3): uvicorn's h11 with the shipped
head deadline, plain h11, and httptools, on the same app and artifact, one run, ratios against the shipped stack.

Run: .venv/bin/python benchmarks/http_stack.py [--artifact docs/results/dld-mnist-table1/detector.safetensors]
     [--requests 1500] [--clients 8]
Per stack: a server process (one torch thread) answering GET /healthz (HTTP overhead alone) and POST /v1/predict
with one 28x28 PNG (what a single-image client sends), from `--clients` threads on keep-alive connections;
requests/s and p50/p99 latency. The client shares the machine: compare the ratios, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from latentdefence.serving.process import free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parents[1]
SERVER = """
import sys, torch, uvicorn
from latentdefence.serving import GuardedClassifier
from latentdefence.serving.app import ServeConfig, create_app
torch.set_num_threads(1)
artifact, port, stack, db = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
config = ServeConfig(audit_db=db)
settings = config.connections.uvicorn_settings()
if stack != "h11 + head deadline (shipped)":
    settings["http"] = stack.split()[0]
uvicorn.run(create_app(GuardedClassifier.load(artifact), config), host="127.0.0.1", port=port, log_level="warning",
            **settings)
"""
STACKS = ("h11 + head deadline (shipped)", "h11 (uvicorn's own)", "httptools")


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((28, 28)) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def load(url: str, route: str, body: bytes | None, requests: int, clients: int) -> tuple[float, list[float]]:
    """(requests per second, latencies in ms) of `requests` calls from `clients` threads."""
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        with httpx.Client(timeout=60) as client:
            for _ in range(n):
                start = time.perf_counter()
                answer = (client.get(url + route) if body is None else
                          client.post(url + route, content=body, headers={"content-type": "image/png"}))
                assert answer.status_code == 200, answer.text
                with lock:
                    latencies.append(1e3 * (time.perf_counter() - start))
    threads = [threading.Thread(target=worker, args=(requests // clients,)) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(latencies) / (time.perf_counter() - start), latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", default=str(ROOT / "docs/results/dld-mnist-table1/detector.safetensors"))
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    image, rows = png(), {}
    for stack in STACKS:
        port = free_port()
        with open(os.devnull, "wb") as quiet:
            proc = subprocess.Popen([sys.executable, "-c", SERVER, args.artifact, str(port), stack,
                                     f"/tmp/http-stack-{port}.sqlite"], stdout=quiet, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_healthy(proc, url, timeout_s=120)
            load(url, "/healthz", None, 200, args.clients)                          # warm up
            rows[stack] = {route: load(url, route, body, args.requests, args.clients)
                           for route, body in (("/healthz", None), ("/v1/predict", image))}
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    shipped = rows[STACKS[0]]
    print(f"{'stack':32s} {'route':12s} {'req/s':>8s} {'vs shipped':>10s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for stack, routes in rows.items():
        for route, (rate, ms) in routes.items():
            p99 = statistics.quantiles(ms, n=100)[98]
            print(f"{stack:32s} {route:12s} {rate:8.0f} {rate / shipped[route][0]:9.2f}x "
                  f"{statistics.median(ms):8.1f} {p99:8.1f}")


if __name__ == "__main__":
    main()
