"""The audit log of flagged inputs: an embedded SQLite database a crash cannot take acknowledged records from.

Durability: WAL journal with ``synchronous=FULL``, so a committed transaction is on disk (fsync of the
WAL) before ``commit()`` returns; the server commits a batch's records before it answers any request of
that batch, so every flagged response a client received has its record, even after ``kill -9``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
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
    neighbours TEXT                  -- JSON {tap: {"indices": [k], "labels": [k]}}: the evidence, nearest first
);
CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,              -- UTC, ISO 8601, when the flag-rate alarm was raised
    model TEXT NOT NULL,
    state TEXT NOT NULL              -- JSON: the CUSUM's statistic, threshold, counts and rates then
);
"""
COLUMNS = ("id", "time", "sha256", "predicted", "nonconformity", "credibility", "threshold", "per_layer",
           "model", "shape", "neighbours")
USER_VERSION = 0x4C444131   # "LDA1" in PRAGMA user_version: this file is a latentdefence audit log, format 1
# flagged's columns in logs written before the format marker: without, then with the k-NN evidence
LEGACY_COLUMNS = (("id", "time", "sha256", "predicted", "nonconformity", "credibility", "threshold", "per_layer",
                   "model", "shape", "image"),
                  ("id", "time", "sha256", "predicted", "nonconformity", "credibility", "threshold", "per_layer",
                   "model", "shape", "image", "neighbours"))


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

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in COLUMNS}


class AuditLog:
    """Append flagged inputs, list and export them. One connection, guarded by a lock (any thread may write).

    The writer marks the file as ours (`USER_VERSION`); a file holding anything else is refused untouched.
    `read_only=True` (what `audit list` / `audit export` use) opens it with SQLite's `mode=ro`: nothing, not
    even the journal mode, is ever written.
    """

    def __init__(self, path: str | Path, keep_images: bool = False, read_only: bool = False) -> None:
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
                self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
                self._check_format(empty_ok=True)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=FULL")
                self._db.executescript(SCHEMA)
                if "neighbours" not in self._flagged_columns():
                    self._db.execute("ALTER TABLE flagged ADD COLUMN neighbours TEXT")     # a log from before
                self._db.execute(f"PRAGMA user_version={USER_VERSION}")
        except sqlite3.DatabaseError as err:
            raise InputValidationError(str(self.path), f"is not a usable audit database ({err})") from err
        self._lock = threading.Lock()

    def _check_format(self, empty_ok: bool) -> None:
        """Ours: marked with USER_VERSION, or (written before the marker) unmarked with exactly our table."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        tables = [r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        if version == USER_VERSION or (empty_ok and version == 0 and not tables):
            return
        if version == 0 and set(tables) <= {"flagged", "sqlite_sequence", "alarms"} \
                and self._flagged_columns() in LEGACY_COLUMNS:
            return
        self._db.close()
        raise InputValidationError(str(self.path), f"is not a latentdefence audit log (user_version {version:#x}, "
                                                   f"tables {tables or 'none'}); refusing to read or change it")

    def _flagged_columns(self) -> tuple[str, ...]:
        return tuple(r[1] for r in self._db.execute("PRAGMA table_info(flagged)"))

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
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ids = [self._db.execute(
                    "INSERT INTO flagged (time, sha256, predicted, nonconformity, credibility, threshold, per_layer,"
                    " model, shape, image, neighbours) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row).lastrowid
                    for row in rows]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return [int(i) for i in ids if i is not None]

    def record_alarm(self, state: dict[str, Any], model: str) -> int:
        """Store one raised alarm durably; its id."""
        now = datetime.now(timezone.utc).isoformat(timespec="microseconds")
        with self._lock:
            row = self._db.execute("INSERT INTO alarms (time, model, state) VALUES (?, ?, ?)",
                                   (now, model, json.dumps(state)))
        return int(row.lastrowid or 0)

    def alarms(self) -> list[dict[str, Any]]:
        """Raised alarms, oldest first: id, time, model and the alarm's state then."""
        with self._lock:
            rows = self._db.execute("SELECT id, time, model, state FROM alarms ORDER BY id").fetchall()
        return [{"id": i, "time": t, "model": m, **json.loads(s)} for i, t, m, s in rows]

    def count(self) -> int:
        """Number of stored records."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM flagged").fetchone()[0])

    def records(self, limit: int | None = None, since_id: int = 0) -> Iterator[FlaggedRecord]:
        """Stored records in id order, from `since_id` (exclusive), at most `limit`."""
        yield from self._select("id > ? ORDER BY id LIMIT ?", (since_id, -1 if limit is None else limit))

    def _select(self, condition: str, args: Sequence[Any]) -> list[FlaggedRecord]:
        with self._lock:
            present = set(self._flagged_columns())  # a read-only legacy log may predate the evidence column
            select = ", ".join(c if c in present else f"NULL AS {c}" for c in COLUMNS)
            rows = self._db.execute(f"SELECT {select} FROM flagged WHERE {condition}", args).fetchall()
        out = []
        for row in rows:
            values = dict(zip(COLUMNS, row))
            out.append(FlaggedRecord(**{**values, "per_layer": json.loads(values["per_layer"]),
                                        "shape": json.loads(values["shape"]),
                                        "neighbours": json.loads(values["neighbours"] or "null")}))
        return out

    def query(self, since: str | None = None, until: str | None = None, label: int | None = None,
              limit: int = 100) -> list[FlaggedRecord]:
        """Newest first: records flagged in [since, until] (ISO 8601 times, UTC if no offset) with F's `label`."""
        where: list[str] = ["1 = 1"]
        args: list[str | int] = []
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
                row = self._db.execute("SELECT shape, image FROM flagged WHERE id = ?", (i,)).fetchone()
                if row and row[1] is not None:
                    out[i] = torch.frombuffer(bytearray(row[1]), dtype=torch.float32).reshape(json.loads(row[0]))
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()
