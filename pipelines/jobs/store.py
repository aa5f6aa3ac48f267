"""The durable record of asynchronous jobs: one SQLite file (WAL) in the outputs folder.

Every async API (RunPod's `/run`, fal's queue, Replicate's predictions) keeps its jobs here.
A job is written, request and all, before its id is handed out; its status, timings and
result are written as they change, so that a restart finds every job where it was. The
store knows nothing of any API's words: each maps these states to its own.

The interface is small on purpose (`add`, `get`, `update`, `unfinished`, `counts`, `sweep`):
a deployment with several servers can put the same records in a shared database.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

DATABASE_NAME = "jobs.sqlite3"

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = "queued", "running", "completed", "failed", "cancelled"
UNFINISHED = (QUEUED, RUNNING)
FINISHED = (COMPLETED, FAILED, CANCELLED)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order
    id TEXT NOT NULL UNIQUE,
    api TEXT NOT NULL,        -- which API took it: runpod, fal, replicate
    route TEXT NOT NULL,      -- the API's model or app the job was sent to
    mode TEXT NOT NULL,       -- the playground mode it runs
    request TEXT NOT NULL,    -- JSON: the raw fields, images by stored id
    options TEXT NOT NULL,    -- JSON: what the API needs to answer (its input, its formats)
    status TEXT NOT NULL,
    created_at REAL NOT NULL, -- unix time
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,  -- starts; more than 1 after a restart re-ran it
    result TEXT,              -- JSON, once completed
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
"""


@dataclass(frozen=True)
class JobRecord:
    id: str
    api: str
    route: str
    mode: str
    request: dict[str, Any]
    options: dict[str, Any] = field(default_factory=dict)
    status: str = QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


COLUMNS = ("id", "api", "route", "mode", "request", "options", "status", "created_at", "started_at",
           "finished_at", "attempts", "result", "error")
JSON_COLUMNS = ("request", "options", "result")


def to_row(record: JobRecord) -> tuple:
    return tuple(json.dumps(getattr(record, name)) if name in JSON_COLUMNS else getattr(record, name)
                 for name in COLUMNS)


def from_row(row: sqlite3.Row) -> JobRecord:
    values = {name: row[name] for name in COLUMNS}
    for name in JSON_COLUMNS:
        values[name] = json.loads(values[name]) if values[name] is not None else None
    return JobRecord(**values)


class JobStore:
    """Jobs in `folder / jobs.sqlite3`. Safe to use from any thread."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / DATABASE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a job handed out survives a power cut too
        self._db.executescript(SCHEMA)

    def add(self, record: JobRecord) -> None:
        """Write a new job; it is on disk when this returns."""
        with self._lock:
            self._db.execute(f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                             to_row(record))

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return from_row(row) if row is not None else None

    def update(self, job_id: str, **changes: Any) -> JobRecord | None:
        """Change some of a job's fields (status, started_at, result, ...); the job as it now is."""
        record = self.get(job_id)
        if record is None:
            return None
        record = replace(record, **changes)
        names = list(changes)
        values = [json.dumps(getattr(record, name)) if name in JSON_COLUMNS else getattr(record, name)
                  for name in names]
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {', '.join(f'{name} = ?' for name in names)} WHERE id = ?",
                             (*values, job_id))
        return record

    def unfinished(self) -> list[JobRecord]:
        """Queued and running jobs, in arrival order."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE status IN (?, ?) ORDER BY seq", UNFINISHED).fetchall()
        return [from_row(row) for row in rows]

    def queued(self, api: str, route: str | None = None) -> list[JobRecord]:
        """An API's (or one of its routes') jobs still waiting, in arrival order."""
        query, values = "SELECT * FROM jobs WHERE status = ? AND api = ?", [QUEUED, api]
        if route is not None:
            query, values = query + " AND route = ?", [*values, route]
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq", values).fetchall()
        return [from_row(row) for row in rows]

    def recent(self, api: str, limit: int = 100, route: str | None = None,
               statuses: tuple[str, ...] | None = None) -> list[JobRecord]:
        """An API's jobs (of one route, in some states, where given), newest first, at most `limit`
        (Replicate's prediction list, Oxen's generation list)."""
        query, values = "SELECT * FROM jobs WHERE api = ?", [api]
        if route is not None:
            query, values = query + " AND route = ?", [*values, route]
        if statuses is not None:
            query, values = query + f" AND status IN ({', '.join('?' * len(statuses))})", [*values, *statuses]
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq DESC LIMIT ?", [*values, limit]).fetchall()
        return [from_row(row) for row in rows]

    def finished_since(self, api: str, since: float) -> list[JobRecord]:
        """An API's jobs that finished at or after this unix time, in the order they finished."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE api = ? AND finished_at >= ? ORDER BY finished_at",
                                    (api, since)).fetchall()
        return [from_row(row) for row in rows]

    def counts(self, api: str, route: str | None = None) -> dict[str, int]:
        """Jobs of an API (or one of its routes) by status, and how many were run again
        after a restart ("retried")."""
        query, values = "SELECT status, COUNT(*), SUM(attempts > 1) FROM jobs WHERE api = ?", [api]
        if route is not None:
            query, values = query + " AND route = ?", [*values, route]
        with self._lock:
            rows = self._db.execute(query + " GROUP BY status", values).fetchall()
        counts = {status: 0 for status in (*UNFINISHED, *FINISHED)}
        counts["retried"] = 0
        for status, number, retried in rows:
            counts[status] = number
            counts["retried"] += retried or 0
        return counts

    def sweep(self, finished_before: float) -> list[JobRecord]:
        """Forget jobs that finished before this unix time; the records removed."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?",
                                    (finished_before,)).fetchall()
            self._db.execute("DELETE FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?", (finished_before,))
        return [from_row(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
