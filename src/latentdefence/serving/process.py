"""Start `latentdefence serve` as its own process on a free loopback port (tests, benchmarks, local tools)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(artifact: str | Path, *args: str, log: str | Path | None = None,
                 timeout_s: float = 90.0) -> tuple[subprocess.Popen[bytes], str]:
    """(process, base URL) of `latentdefence serve ARTIFACT --port P ARGS...` once GET /healthz answers 200.

    The server's output goes to `log` (appended), else nowhere; the caller stops the process.
    """
    proc, url = launch_server(artifact, *args, log=log)
    wait_until_healthy(proc, url, log, timeout_s)
    return proc, url


def launch_server(artifact: str | Path, *args: str, log: str | Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Start the process and return at once (start several, then `wait_until_healthy` on each)."""
    port = free_port()
    script = Path(sys.executable).with_name("latentdefence")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from latentdefence.cli import main; main()"]
    with open(log, "ab") if log else open(os.devnull, "wb") as out:
        proc = subprocess.Popen([*cmd, "serve", str(artifact), "--port", str(port), *args], stdout=out,
                                stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_until_healthy(proc: subprocess.Popen[bytes], url: str, log: str | Path | None = None,
                       timeout_s: float = 90.0) -> None:
    """Return once GET /healthz answers 200; raise (killing the process) if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(log).read_text(errors="replace")[-2000:] if log else "(pass log= to see its output)"
            raise RuntimeError(f"latentdefence serve exited with code {proc.returncode}: {tail}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"latentdefence serve did not answer on {url} within {timeout_s:g} s")
