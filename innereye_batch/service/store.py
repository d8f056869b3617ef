"""The job store: one SQLite file under ``--state-dir`` (embedded, no server), durable on every commit.

A job is ``queued`` when its upload is on disk and its row committed (only then does the client get its run
id), ``running`` while the worker has it, then ``succeeded`` (the pipeline ran; per-item outcomes are in its
report), ``failed`` (the upload was refused or the job could not run), ``cancelled`` (its model is no longer
served or has changed, or it was interrupted too often) and finally ``expired`` (its outputs deleted after
``--keep-results``). A job found ``running`` at start-up was interrupted (the service was killed): it is queued
again. A job keeps the results fingerprint of the model that accepted it (``results_fp``; NULL in rows of earlier
versions), so that a different model served under the same id after a restart never runs it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from innereye_batch.errors import UsageError

DATABASE = "jobs.sqlite3"
FINISHED_STATES = ("succeeded", "failed", "cancelled")
STATES = ("queued", "running", *FINISHED_STATES, "expired")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    model_id TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    stage TEXT NOT NULL DEFAULT '',
    items_total INTEGER NOT NULL DEFAULT 0,
    items_done INTEGER NOT NULL DEFAULT 0,
    http_status INTEGER,
    extra_details TEXT,
    reason TEXT NOT NULL DEFAULT '',
    report TEXT,
    results_fp TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created);
"""
_ADDED_COLUMNS = {"results_fp": "TEXT"}
"""Columns added since the first schema: a database of an earlier version gets them (NULL in its rows)."""


@dataclass(frozen=True)
class Job:
    """One row of the store."""

    id: str
    model_id: str
    state: str
    created: float
    started: float | None
    finished: float | None
    attempts: int
    stage: str
    items_total: int
    items_done: int
    http_status: int | None
    """The status of the InnerEye result (``GET /v1/model/results``) once the job has finished."""
    extra_details: str | None
    reason: str
    report: dict[str, Any] | None
    """Per item: status, reason, findings; the files not used; written when the job finishes."""
    results_fp: str | None = None
    """The results fingerprint of the model that accepted the job (None: accepted by an earlier version)."""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        values = dict(row)
        values["report"] = json.loads(values["report"]) if values["report"] else None
        return cls(**values)


class JobStore:
    """Jobs in SQLite; safe to use from several threads (one connection, one lock)."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(
            state_dir / DATABASE, check_same_thread=False, isolation_level=None, timeout=30
        )
        self._connection.row_factory = sqlite3.Row
        self._lock = threading.Lock()
        with self._lock:
            try:
                self._connection.execute("PRAGMA journal_mode=WAL")
                self._connection.execute("PRAGMA synchronous=FULL")  # a committed job survives a power cut
                self._connection.executescript(_SCHEMA)
                self._add_missing_columns()
            except sqlite3.DatabaseError as error:
                self._connection.close()
                raise UsageError(
                    f"the job database {state_dir / DATABASE} cannot be read ({error}): restore it, or move it "
                    "away to start with no jobs"
                ) from None

    def _add_missing_columns(self) -> None:
        columns = {row["name"] for row in self._connection.execute("PRAGMA table_info(jobs)")}
        for name, kind in _ADDED_COLUMNS.items():
            if name not in columns:
                self._connection.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def _execute(self, sql: str, parameters: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._connection.execute(sql, parameters).fetchall()

    def add(
        self,
        job_id: str,
        model_id: str,
        *,
        refused: str = "",
        http_status: int | None = None,
        results_fp: str | None = None,
    ) -> None:
        """A new job, queued (for the model of fingerprint ``results_fp``); or, with ``refused``, one that failed at
        once with that reason."""
        now = time.time()
        if refused:
            self._execute(
                "INSERT INTO jobs (id, model_id, state, created, finished, stage, http_status, extra_details, reason)"
                " VALUES (?, ?, 'failed', ?, ?, 'refused', ?, 'InvalidZipFile', ?)",
                (job_id, model_id, now, now, http_status or 400, refused),
            )
        else:
            self._execute(
                "INSERT INTO jobs (id, model_id, state, created, stage, results_fp)"
                " VALUES (?, ?, 'queued', ?, 'queued', ?)",
                (job_id, model_id, now, results_fp),
            )

    def get(self, job_id: str) -> Job | None:
        rows = self._execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(rows[0]) if rows else None

    def claim_next(self) -> Job | None:
        """The oldest queued job, now ``running`` (its attempts counted); None when none is queued."""
        with self._lock:
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                row = connection.execute(
                    "SELECT id FROM jobs WHERE state = 'queued' ORDER BY created, id LIMIT 1"
                ).fetchone()
                if row is None:
                    connection.execute("COMMIT")
                    return None
                connection.execute(
                    "UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1, stage = 'starting'"
                    " WHERE id = ?",
                    (time.time(), row["id"]),
                )
                claimed = connection.execute("SELECT * FROM jobs WHERE id = ?", (row["id"],)).fetchone()
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        return Job.from_row(claimed)

    def progress(self, job_id: str, stage: str, items_total: int | None = None, items_done: int | None = None) -> None:
        """Record what a running job is doing (shown by the status endpoint)."""
        self._execute(
            "UPDATE jobs SET stage = ?, items_total = COALESCE(?, items_total), items_done = COALESCE(?, items_done)"
            " WHERE id = ?",
            (stage, items_total, items_done, job_id),
        )

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        http_status: int,
        extra_details: str | None = None,
        reason: str = "",
        report: dict[str, Any] | None = None,
    ) -> None:
        """A job at its end: ``state`` one of ``FINISHED_STATES``, the status its InnerEye result answers with."""
        if state not in FINISHED_STATES:
            raise ValueError(f"a job finishes as one of {FINISHED_STATES}, not {state!r}")
        self._execute(
            "UPDATE jobs SET state = ?, finished = ?, stage = 'finished', http_status = ?, extra_details = ?,"
            " reason = ?, report = ? WHERE id = ?",
            (
                state,
                time.time(),
                http_status,
                extra_details,
                reason,
                json.dumps(report, allow_nan=False) if report is not None else None,
                job_id,
            ),
        )

    def requeue_interrupted(self) -> list[str]:
        """Jobs left ``running`` by a killed service, queued again (at start-up, before the worker starts)."""
        with self._lock:
            rows = self._connection.execute("SELECT id FROM jobs WHERE state = 'running'").fetchall()
            self._connection.execute(
                "UPDATE jobs SET state = 'queued', stage = 'queued', items_done = 0 WHERE state = 'running'"
            )
        return [row["id"] for row in rows]

    def expire(self, older_than: float) -> list[str]:
        """Finished jobs that ended before ``older_than`` (epoch seconds), now ``expired``; their ids."""
        with self._lock:
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                rows = connection.execute(
                    "SELECT id FROM jobs WHERE state IN (?, ?, ?) AND finished < ?", (*FINISHED_STATES, older_than)
                ).fetchall()
                connection.executemany(
                    "UPDATE jobs SET state = 'expired', stage = 'expired' WHERE id = ?", [(r["id"],) for r in rows]
                )
                connection.execute("COMMIT")
            except BaseException:  # never leave the shared connection inside a transaction (later jobs in it)
                connection.execute("ROLLBACK")
                raise
        return [row["id"] for row in rows]

    def position(self, job: Job) -> int:
        """Jobs ahead of a queued ``job`` (the running one included)."""
        rows = self._execute(
            "SELECT COUNT(*) AS n FROM jobs WHERE state = 'running' OR (state = 'queued' AND (created, id) < (?, ?))",
            (job.created, job.id),
        )
        return int(rows[0]["n"])

    def counts(self) -> dict[str, int]:
        """Jobs per state (every state listed)."""
        rows = self._execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        counts = dict.fromkeys(STATES, 0)
        counts.update({row["state"]: int(row["n"]) for row in rows})
        return counts

    def ids(self, states: tuple[str, ...]) -> set[str]:
        """Ids of the jobs in ``states``."""
        marks = ",".join("?" * len(states))
        return {row["id"] for row in self._execute(f"SELECT id FROM jobs WHERE state IN ({marks})", states)}
