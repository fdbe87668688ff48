"""The audit store (issue 38, item 7): SQLite and PostgreSQL keep the same contract; several server replicas
writing to one PostgreSQL database at once lose nothing and each console reads them all; the SQLite file is its
owner's alone; retention deletes what is old and nothing else."""

from __future__ import annotations

import io
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from guard_artifact import artifact, guard, images  # noqa: F401 (shared fixtures)
from postgres_server import fresh_database, postgres_url  # noqa: F401 (shared fixture)

from latentdefence.serving import AuditLog, open_audit_log
from latentdefence.serving.audit import PostgresAuditLog, parse_duration
from latentdefence.serving.process import launch_server, wait_until_healthy
from latentdefence.validation import InputValidationError


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where an empty store lives: a new SQLite file, or a new database on the test's PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "audit.sqlite")
    server = request.getfixturevalue("postgres_url")
    return fresh_database(server, f"audit_{request.node.name.split('[')[0][-40:]}".lower())


def _record(log: AuditLog, n: int, label: int = 1, model: str = "m") -> list[int]:
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(n))
    return log.record(x, torch.full((n,), label), torch.full((n,), 3.0), torch.full((n,), 0.01),
                      {"conv1": torch.ones(n)}, 2.0, model,
                      [{"conv1": {"indices": [0, 1], "labels": [label, label]}}] * n)


def test_both_stores_keep_the_same_contract(store_target: str) -> None:
    log = open_audit_log(store_target, keep_images=True)
    first, second = _record(log, 3), _record(log, 2, label=7)
    assert first == sorted(first) and second[0] > first[-1] and log.count() == 5
    assert [r.id for r in log.query(label=7)] == second[::-1]                       # newest first
    assert [r.id for r in log.records(limit=2, since_id=first[0])] == first[1:3]
    assert log.query()[0].neighbours == {"conv1": {"indices": [0, 1], "labels": [7, 7]}}
    assert set(log.images(first)) == set(first) and log.images(first)[first[0]].shape == (1, 4, 4)
    assert log.record_alarm({"statistic": 14.2}, "m") >= 1 and log.alarms()[0]["statistic"] == 14.2
    assert log.query(since=(datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()) == []
    log.close()
    reader = open_audit_log(store_target, read_only=True)
    assert reader.count() == 5
    with pytest.raises(Exception):           # read-only means read-only, in both
        _record(reader, 1)
    reader.close()


def test_retention_deletes_old_records_and_alarms_only(store_target: str) -> None:
    log = open_audit_log(store_target)
    old = _record(log, 4)
    log.record_alarm({"statistic": 1.0}, "m")
    _age(store_target, old[-1], timedelta(days=40))
    new = _record(log, 2)
    assert log.prune(parse_duration("30d")) == 4
    assert [r.id for r in log.records()] == new and log.alarms() == []
    assert log.prune(timedelta(days=30)) == 0
    log.close()


def _age(target: str, last_id: int, by: timedelta) -> None:
    """Move records up to `last_id` and every alarm `by` into the past, writing the database directly."""
    past = (datetime.now(timezone.utc) - by).isoformat(timespec="microseconds")
    statements = [("UPDATE flagged SET time = ? WHERE id <= ?", (past, last_id)),
                  ("UPDATE alarms SET time = ?", (past,))]
    if target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(target, autocommit=True) as conn:
            for sql, args in statements:
                conn.execute(sql.replace("?", "%s"), args)
    else:
        with sqlite3.connect(target) as conn:
            for sql, args in statements:
                conn.execute(sql, args)


@pytest.mark.parametrize("text, seconds", [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("3600s", 3600),
                                           (" 1.5h ", 5400)])
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "30", "0d", "-1d", "1w", "d", "1e3s", "nan d"])
def test_bad_durations_are_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match="not a positive duration"):
        parse_duration(text)


def test_the_sqlite_log_and_its_journal_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        log = open_audit_log(tmp_path / "audit.sqlite")
        _record(log, 2)
        files = sorted(tmp_path.glob("audit.sqlite*"))
        assert {f.name for f in files} >= {"audit.sqlite", "audit.sqlite-wal"}
        assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files), [oct(f.stat().st_mode) for f in files]
        log.close()
    finally:
        os.umask(old)


def test_a_postgres_database_that_is_not_ours_is_refused_untouched(postgres_url: str) -> None:  # noqa: F811
    import psycopg

    url = fresh_database(postgres_url, "someone_elses")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE flagged (id INTEGER, what TEXT)")
    with pytest.raises(InputValidationError, match="not a latentdefence audit database.*but a flagged table"):
        open_audit_log(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                            ).fetchall() == [("flagged",)]
        conn.execute("DROP TABLE flagged")
        conn.execute("CREATE TABLE latentdefence_schema (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO latentdefence_schema VALUES (99)")
    with pytest.raises(InputValidationError, match=r"schema version \[99\]"):
        open_audit_log(url)
    with pytest.raises(InputValidationError, match="no latentdefence_schema table"):
        open_audit_log(fresh_database(postgres_url, "empty_one"), read_only=True)


def test_a_password_in_the_url_never_reaches_a_message(postgres_url: str) -> None:  # noqa: F811
    url = postgres_url.replace("latentdefence@", "latentdefence:hunter2@").rsplit("/", 1)[0] + "/no_such_db"
    with pytest.raises(InputValidationError) as err:
        PostgresAuditLog(url)
    assert "hunter2" not in str(err.value) and "latentdefence:***@" in str(err.value)


@pytest.fixture()
def replicas(artifact: Path, postgres_url: str, tmp_path: Path) -> Iterator[tuple[list[str], str]]:  # noqa: F811
    """Three `latentdefence serve` processes on one fresh PostgreSQL audit database, started together."""
    db = fresh_database(postgres_url, "replicas")
    started = [launch_server(artifact, "--audit-db", db, "--threads", "1", log=tmp_path / f"r{i}.log")
               for i in range(3)]
    try:
        for i, (proc, url) in enumerate(started):
            wait_until_healthy(proc, url, tmp_path / f"r{i}.log")
        yield [url for _, url in started], db
    finally:
        for proc, _ in started:
            proc.terminate()
        for proc, _ in started:
            proc.wait(timeout=20)


def _npy(x: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, x.numpy())
    return buffer.getvalue()


def test_replicas_writing_at_once_lose_nothing_and_each_console_reads_them_all(
        replicas: tuple[list[str], str], images: dict[str, torch.Tensor]) -> None:  # noqa: F811
    urls, db = replicas
    x = torch.cat([images["clean"][:4], images["flagged"][:4]])

    def post(i: int) -> list[dict[str, object]]:
        answer = httpx.post(f"{urls[i % 3]}/v1/predict", content=_npy(x), timeout=60,
                            headers={"content-type": "application/x-npy"})
        assert answer.status_code == 200, answer.text
        return answer.json()["predictions"]

    with ThreadPoolExecutor(12) as pool:
        answers = [p for batch in pool.map(post, range(60)) for p in batch]
    ids = [p["audit_id"] for p in answers if p["is_adversarial"]]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)                      # every flagged answer has its own row
    log = open_audit_log(db, read_only=True)
    assert log.count() == len(ids) and {r.id for r in log.records()} == set(ids)
    log.close()
    for url in urls:                                                         # any replica's console sees them all
        listed = httpx.get(f"{url}/v1/audit", params={"limit": 10_000}, timeout=30).json()
        assert {r["id"] for r in listed} == set(ids)
    assert httpx.post(f"{urls[0]}/v1/audit/{ids[0]}/verdict", json={"verdict": "confirmed"}, timeout=30).is_success
    assert "latentdefence_audit_confirmed 1.0" in httpx.get(f"{urls[2]}/metrics", timeout=30).text   # another replica
    listed_by_cli = subprocess.run([str(Path(sys.executable).with_name("latentdefence")), "audit", "list", "--db",
                                    db, "--limit", "1"], capture_output=True, text=True, timeout=120)
    assert f"{len(ids)} flagged inputs in {db}" in listed_by_cli.stdout, listed_by_cli.stderr
