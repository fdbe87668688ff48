"""A throwaway PostgreSQL server for the tests that need a real one (Debian's `postgresql` package; `.ci/run`
installs it): its own data folder and port on loopback, stopped afterwards. Skips, saying why, where it is absent."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from latentdefence.serving.process import free_port


def _bin(program: str) -> str | None:
    found = shutil.which(program) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"))
    return found if isinstance(found, str) else (found[-1] if found else None)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """postgresql://... of a fresh server (trust authentication on loopback only)."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (Debian's postgresql; LATENTDEFENCE_SYSTEM_DEPS=1 make setup "
                    "installs it, as CI does)")
    pytest.importorskip("psycopg", reason="psycopg (the postgres extra) is not installed")
    folder = Path(tempfile.mkdtemp(prefix="latentdefence-postgres-"))   # pytest's own folders are root's alone
    as_user: list[str] = []
    if os.geteuid() == 0:                       # initdb refuses to run as root: run the server as `postgres`
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port, data = free_port(), folder / "data"

    def run(*cmd: str) -> None:
        done = subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = folder / "server.log"
            raise RuntimeError(f"{cmd[0]} failed: {done.stdout}{done.stderr}"
                               f"{log.read_text() if log.exists() else ''}")
    run(initdb, "-D", str(data), "-A", "trust", "-U", "latentdefence", "--no-sync")
    run(pg_ctl, "-D", str(data), "-l", str(folder / "server.log"), "-w", "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50", "start")
    try:
        yield f"postgresql://latentdefence@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def fresh_database(url: str, name: str) -> str:
    """A new empty database on the server at `url`; its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name
