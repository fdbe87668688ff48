"""The audit log of flagged inputs, a store a crash cannot take acknowledged records from: an embedded SQLite
file (the default, one server) or a PostgreSQL database that many replicas share (`open_audit_log`).

Durability: the server commits a batch's records before it answers any request of that batch, so every flagged
response a client received has its record, even after ``kill -9``. SQLite: WAL journal with ``synchronous=FULL``
(the WAL is fsynced before ``COMMIT`` returns), the file created 0600. PostgreSQL: a committed transaction is
durable by the server's own guarantee (``synchronous_commit`` on, its default).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import torch

from ..validation import InputValidationError

SCHEMA = """
CREATE TABLE IF NOT EXISTS flagged (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,              -- UTC, ISO 8601
    sha256 TEXT NOT NULL,            -- of the input as float32 (C, H, W) C-order bytes
    predicted INTEGER NOT NULL,      -- F's class
    nonconformity REAL NOT NULL,     -- summed over layers
    credibility REAL NOT NULL,
    threshold REAL NOT NULL,
    per_layer TEXT NOT NULL,         -- JSON {tap: non-conformity}
    model TEXT NOT NULL,             -- sha256 of the detector artifact that judged it
    shape TEXT NOT NULL,             -- JSON [C, H, W]
    image BLOB,                      -- float32 pixels when images are kept, else NULL
    neighbours TEXT,                 -- JSON {tap: {"indices": [k], "labels": [k]}}: the evidence, nearest first
    verdict TEXT                     -- an operator's review: 'confirmed' (an attack) or 'false_positive'; NULL: none
);
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,              -- UTC, ISO 8601, when the flag-rate alarm was raised
    model TEXT NOT NULL,
    state TEXT NOT NULL              -- JSON: the CUSUM's statistic, threshold, counts and rates then
);
"""
COLUMNS = ("id", "time", "sha256", "predicted", "nonconformity", "credibility", "threshold", "per_layer",
           "model", "shape", "neighbours", "verdict")
VERDICTS = ("confirmed", "false_positive")   # what an operator can say of a flagged input
USER_VERSION = 0x4C444131   # "LDA1" in PRAGMA user_version: this file is a latentdefence audit log, format 1
# flagged's columns in logs written before the format marker: without, then with the k-NN evidence
LEGACY_COLUMNS = (("id", "time", "sha256", "predicted", "nonconformity", "credibility", "threshold", "per_layer",
                   "model", "shape", "image"),
                  ("id", "time", "sha256", "predicted", "nonconformity", "credibility", "threshold", "per_layer",
                   "model", "shape", "image", "neighbours"))


POSTGRES_SCHEMA = """
CREATE TABLE IF NOT EXISTS latentdefence_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS flagged (
    id BIGSERIAL PRIMARY KEY, time TEXT NOT NULL, sha256 TEXT NOT NULL, predicted BIGINT NOT NULL,
    nonconformity DOUBLE PRECISION NOT NULL, credibility DOUBLE PRECISION NOT NULL,
    threshold DOUBLE PRECISION NOT NULL, per_layer TEXT NOT NULL, model TEXT NOT NULL, shape TEXT NOT NULL,
    image BYTEA, neighbours TEXT, verdict TEXT
);
ALTER TABLE flagged ADD COLUMN IF NOT EXISTS verdict TEXT;
CREATE INDEX IF NOT EXISTS flagged_time ON flagged (time);
CREATE TABLE IF NOT EXISTS alarms (
    id BIGSERIAL PRIMARY KEY, time TEXT NOT NULL, model TEXT NOT NULL, state TEXT NOT NULL
);
"""                         # the same columns as SQLite's; times as the same sortable UTC ISO 8601 text
POSTGRES_VERSION = 1        # latentdefence_schema.version: the format of these tables
_SCHEMA_LOCK = 0x4C444131   # advisory lock id: replicas starting together create the tables once
NO_LIMIT = 2**63 - 1        # LIMIT meaning "all rows", valid in both SQLite and PostgreSQL


def image_sha256(image: torch.Tensor) -> str:
    """Hex sha256 of one image (C, H, W) as contiguous float32 bytes: the same pixels give the same hash."""
    return hashlib.sha256(image.to(torch.float32).contiguous().numpy().tobytes()).hexdigest()


def utc_iso(value: str) -> str:
    """An ISO 8601 time as the log stores it (UTC, microseconds); a ValueError names a bad one."""
    try:
        when = datetime.fromisoformat(value)
    except ValueError as err:
        raise ValueError(f"{value!r} is not an ISO 8601 time (e.g. 2024-05-01T12:00:00)") from err
    when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)
    return when.isoformat(timespec="microseconds")


@dataclass(frozen=True)
class FlaggedRecord:
    """One flagged input, as stored."""

    id: int
    time: str
    sha256: str
    predicted: int
    nonconformity: float
    credibility: float
    threshold: float
    per_layer: dict[str, float]
    model: str
    shape: list[int]
    neighbours: dict[str, dict[str, list[int]]] | None = None   # absent from logs written before it existed
    verdict: str | None = None                                  # an operator's review (VERDICTS), if any

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in COLUMNS}


class AuditLog(ABC):
    """Append flagged inputs and raised alarms; list, export and prune them. Any thread may call any method.

    Subclasses hold the connection; SQL is written once here with `?` placeholders.
    """

    keep_images: bool
    read_only: bool

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the log is (a file path, or a database URL without its password), for messages."""

    @abstractmethod
    def _execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """A cursor of `sql` run with `args` (placeholders `?`)."""

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Any]:
        """One atomic, durable write transaction."""

    @abstractmethod
    def _columns(self) -> tuple[str, ...]:
        """The flagged table's columns."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    def record(self, images: torch.Tensor, predicted: torch.Tensor, nonconformity: torch.Tensor,
               credibility: torch.Tensor, per_layer: dict[str, torch.Tensor], threshold: float,
               model: str, neighbours: Sequence[dict[str, Any]] | None = None) -> list[int]:
        """Store inputs (N, C, H, W), verdicts and k-NN evidence in one durable transaction; their ids, in order."""
        now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        rows = [(now, image_sha256(images[i]), int(predicted[i]), float(nonconformity[i]), float(credibility[i]),
                 threshold, json.dumps({tap: float(v[i]) for tap, v in per_layer.items()}), model,
                 json.dumps(list(images.shape[1:])),
                 images[i].to(torch.float32).contiguous().numpy().tobytes() if self.keep_images else None,
                json.dumps(neighbours[i]) if neighbours is not None else None)
                for i in range(len(images))]
        if not rows:
            return []
        with self._lock, self._transaction():
            return [int(self._execute(
                "INSERT INTO flagged (time, sha256, predicted, nonconformity, credibility, threshold, per_layer,"
                " model, shape, image, neighbours) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                row).fetchone()[0]) for row in rows]

    def record_alarm(self, state: dict[str, Any], model: str) -> int:
        """Store one raised alarm durably; its id."""
        now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        with self._lock, self._transaction():
            return int(self._execute("INSERT INTO alarms (time, model, state) VALUES (?, ?, ?) RETURNING id",
                                     (now, model, json.dumps(state))).fetchone()[0])

    def alarms(self) -> list[dict[str, Any]]:
        """Raised alarms, oldest first: id, time, model and the alarm's state then."""
        with self._lock:
            rows = self._execute("SELECT id, time, model, state FROM alarms ORDER BY id").fetchall()
        return [{"id": i, "time": t, "model": m, **json.loads(s)} for i, t, m, s in rows]

    def count(self) -> int:
        """Number of stored records."""
        with self._lock:
            return int(self._execute("SELECT COUNT(*) FROM flagged").fetchone()[0])

    def records(self, limit: int | None = None, since_id: int = 0) -> Iterator[FlaggedRecord]:
        """Stored records in id order, from `since_id` (exclusive), at most `limit`."""
        yield from self._select("id > ? ORDER BY id LIMIT ?", (since_id, NO_LIMIT if limit is None else limit))

    def _select(self, condition: str, args: Sequence[Any]) -> list[FlaggedRecord]:
        with self._lock:
            present = set(self._columns())   # a read-only legacy log may predate the evidence column
            select = ", ".join(c if c in present else f"NULL AS {c}" for c in COLUMNS)
            rows = self._execute(f"SELECT {select} FROM flagged WHERE {condition}", args).fetchall()
        out = []
        for row in rows:
            values = dict(zip(COLUMNS, row))
            out.append(FlaggedRecord(**{**values, "per_layer": json.loads(values["per_layer"]),
                                        "shape": json.loads(values["shape"]),
                                        "neighbours": json.loads(values["neighbours"] or "null")}))
        return out

    def query(self, since: str | None = None, until: str | None = None, label: int | None = None,
              limit: int = 100, before: int | None = None) -> list[FlaggedRecord]:
        """Newest first: records flagged in [since, until] (ISO 8601 times, UTC if no offset) with F's `label`;
        `before`: only ids below it (the next page)."""
        where: list[str] = ["1 = 1"] if before is None else ["id < ?"]
        args: list[str | int] = [] if before is None else [before]
        for op, value in ((">=", since), ("<=", until)):
            if value is not None:
                where.append(f"time {op} ?")
                args.append(utc_iso(value))
        if label is not None:
            where.append("predicted = ?")
            args.append(label)
        return self._select(f"{' AND '.join(where)} ORDER BY id DESC LIMIT ?", (*args, limit))

    def images(self, ids: Sequence[int]) -> dict[int, torch.Tensor]:
        """Stored images (C, H, W) of records `ids` that kept one."""
        out = {}
        with self._lock:
            for i in ids:
                row = self._execute("SELECT shape, image FROM flagged WHERE id = ?", (i,)).fetchone()
                if row and row[1] is not None:
                    out[i] = torch.frombuffer(bytearray(row[1]), dtype=torch.float32).reshape(json.loads(row[0]))
        return out

    def set_verdict(self, record: int, verdict: str | None) -> bool:
        """Store an operator's review of record `record` (one of VERDICTS, or None to clear it); False: no such id."""
        if verdict is not None and verdict not in VERDICTS:
            raise InputValidationError("verdict", f"must be one of {VERDICTS} or null, got {verdict!r}")
        with self._lock, self._transaction():
            return bool(self._execute("UPDATE flagged SET verdict = ? WHERE id = ?", (verdict, record)).rowcount)

    def verdict_counts(self) -> dict[str, int]:
        """How many records each verdict has (every replica's, on a shared store)."""
        with self._lock:
            if "verdict" not in self._columns():    # a read-only log from before verdicts
                return dict.fromkeys(VERDICTS, 0)
            rows = dict(self._execute("SELECT verdict, COUNT(*) FROM flagged WHERE verdict IS NOT NULL "
                                      "GROUP BY verdict").fetchall())
        return {v: int(rows.get(v, 0)) for v in VERDICTS}

    def prune(self, older_than: timedelta) -> int:
        """Delete records and alarms older than `older_than` (retention); how many records went."""
        if self.read_only:
            raise PermissionError(f"{self.location} is open read-only")
        if older_than <= timedelta(0):
            raise InputValidationError("older_than", f"must be a positive duration, got {older_than}")
        cutoff = (datetime.now(timezone.utc) - older_than).isoformat(timespec="microseconds")
        with self._lock, self._transaction():
            self._execute("DELETE FROM alarms WHERE time < ?", (cutoff,))
            return int(self._execute("DELETE FROM flagged WHERE time < ?", (cutoff,)).rowcount)


class SQLiteAuditLog(AuditLog):
    """The embedded store: one SQLite file, one connection guarded by a lock, created readable by its owner only.

    The writer marks the file as ours (`USER_VERSION`); a file holding anything else is refused untouched.
    `read_only=True` (what `audit list` / `audit export` use) opens it with SQLite's `mode=ro`: nothing, not
    even the journal mode, is ever written.
    """

    def __init__(self, path: str | Path, keep_images: bool = False, read_only: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.keep_images = keep_images
        self.read_only = read_only
        try:
            if read_only:
                if not self.path.is_file():
                    raise FileNotFoundError(f"{self.path}: no such audit log")
                self._db = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                           check_same_thread=False, isolation_level=None)
                self._check_format(empty_ok=False)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _create_private(self.path)
                self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
                self._check_format(empty_ok=True)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(SCHEMA)
                for column in ("neighbours", "verdict"):                                  # a log from before
                    if column not in self._columns():
                        self._db.execute(f"ALTER TABLE flagged ADD COLUMN {column} TEXT")
                self._db.execute(f"PRAGMA user_version={USER_VERSION}")
        except sqlite3.DatabaseError as err:
            raise InputValidationError(str(self.path), f"is not a usable audit database ({err})") from err

    @property
    def location(self) -> str:
        return str(self.path)

    def _check_format(self, empty_ok: bool) -> None:
        """Ours: marked with USER_VERSION, or (written before the marker) unmarked with exactly our table."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = [r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if version == USER_VERSION or (empty_ok and version == 0 and not tables):
            return
        if version == 0 and set(tables) <= {"flagged", "sqlite_sequence", "alarms"} \
                and self._columns() in LEGACY_COLUMNS:
            return
        self._db.close()
        raise InputValidationError(str(self.path), f"is not a latentdefence audit log (user_version {version:#x}, "
                                                   f"tables {tables or 'none'}); refusing to read or change it")

    def _columns(self) -> tuple[str, ...]:
        return tuple(r[1] for r in self._db.execute("PRAGMA table_info(flagged)"))

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, tuple(args))

    def _transaction(self) -> AbstractContextManager[Any]:
        return _SQLiteTransaction(self._db)

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _SQLiteTransaction(AbstractContextManager[None]):
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *rest: Any) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _create_private(path: Path) -> None:
    """Create `path` empty with mode 0600 if it does not exist (SQLite gives its WAL files the same mode)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass


class PostgresAuditLog(AuditLog):
    """A PostgreSQL database shared by every replica of a service: each writes its records in its own
    transactions (ids from one sequence), and any of them (or the console of any) reads all of them.

    The tables are created once (an advisory lock serialises replicas starting together) and marked with
    `POSTGRES_VERSION`; a database whose `flagged` table is not ours is refused untouched.
    """

    def __init__(self, url: str, keep_images: bool = False, read_only: bool = False) -> None:
        super().__init__()
        try:
            import psycopg
        except ImportError as err:
            raise ImportError("a postgresql:// audit store needs psycopg: pip install 'latentdefence[postgres]'") \
                from err
        self.url, self.keep_images, self.read_only = url, keep_images, read_only
        try:
            self._db = psycopg.connect(url, autocommit=True, connect_timeout=10)
            if read_only:
                self._db.execute("SET default_transaction_read_only = on")
            else:
                with self._db.transaction():
                    self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                    self._check_format()
                    self._db.execute(POSTGRES_SCHEMA)     # a constant, several statements (simple protocol)
                    if self._db.execute("SELECT COUNT(*) FROM latentdefence_schema").fetchone() == (0,):
                        self._db.execute("INSERT INTO latentdefence_schema VALUES (%s)", (POSTGRES_VERSION,))
            self._check_format(empty_ok=not read_only)
        except psycopg.Error as err:
            raise InputValidationError(self.location, f"is not a usable audit database ({err})") from err

    @property
    def location(self) -> str:
        return re.sub(r"(//[^:/@]+):[^@/]*@", r"\1:***@", self.url)

    def _check_format(self, empty_ok: bool = True) -> None:
        """Ours: a latentdefence_schema table at our version, or (about to be created) no flagged table at all."""
        tables = {r[0] for r in self._db.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")}
        if "latentdefence_schema" in tables:
            versions = [r[0] for r in self._db.execute("SELECT version FROM latentdefence_schema")]
            if versions == [POSTGRES_VERSION] or (empty_ok and not versions):
                return
            problem = f"schema version {versions}, this code writes {POSTGRES_VERSION}"
        elif empty_ok and "flagged" not in tables:
            return
        else:
            problem = "no latentdefence_schema table" + (" but a flagged table" if "flagged" in tables else "")
        self._db.close()
        raise InputValidationError(self.location, f"is not a latentdefence audit database ({problem}); refusing "
                                                  "to read or change it")

    def _columns(self) -> tuple[str, ...]:
        return tuple(r[0] for r in self._db.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'flagged' "
            "AND table_schema = current_schema() ORDER BY ordinal_position"))

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql.replace("?", "%s"), tuple(args))   # our own SQL: no literal "?" in it

    def _transaction(self) -> AbstractContextManager[Any]:
        return self._db.transaction()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_audit_log(target: str | Path, keep_images: bool = False, read_only: bool = False) -> AuditLog:
    """The audit store at `target`: a postgresql:// URL (shared by replicas), else a SQLite file path."""
    text = str(target)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresAuditLog(text, keep_images, read_only)
    return SQLiteAuditLog(target, keep_images, read_only)


def parse_duration(text: str) -> timedelta:
    """'30d', '12h', '90m' or '3600s' as a timedelta; a ValueError names a bad one."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhms])\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a positive duration like 30d, 12h, 90m or 3600s")
    unit = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}[match.group(2)]
    return timedelta(**{unit: float(match.group(1))})
