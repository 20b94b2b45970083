"""The SQLite job store (the default): one file per endpoint, WAL, durable commits grouped by ``Writer``.

WAL lets readers (``sqlite3`` on the command line, a backup) look while lbproxy writes; it needs a local
filesystem (not NFS). A durable operation returns once the WAL holding it is fsynced (what
``synchronous=FULL`` does), so it survives a power loss, not only a crash of lbproxy.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .answers import JobCounts
from .jobs import RETRYABLE, TIMED_OUT_ERROR, WORKER_LOST, Job, JobState, NewJob, after_worker_lost, deadline
from .store import DuplicateJob, Expired, Load
from .writer import Writer

SWEEP_BATCH = 1000  # rows one sweep step changes: keeps every transaction short

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    endpoint TEXT NOT NULL,
    state TEXT NOT NULL,
    payload TEXT NOT NULL,
    webhook TEXT,
    low_priority INTEGER NOT NULL,
    sync INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    execution_timeout REAL,
    started_at REAL,
    deadline_at REAL,
    finished_at REAL,
    purge_at REAL,
    worker_id TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    output TEXT,
    error TEXT,
    chunk_seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (endpoint, state, low_priority, created_at);
CREATE INDEX IF NOT EXISTS jobs_worker ON jobs (worker_id) WHERE state = 'IN_PROGRESS';
CREATE INDEX IF NOT EXISTS jobs_lease ON jobs (lease_until) WHERE state = 'IN_PROGRESS';
CREATE INDEX IF NOT EXISTS jobs_deadline ON jobs (deadline_at) WHERE state = 'IN_PROGRESS';
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at);
CREATE INDEX IF NOT EXISTS jobs_purge ON jobs (purge_at) WHERE purge_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS chunks (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
"""

_COLUMNS = ("id, state, payload, webhook, low_priority, sync, created_at, expires_at, execution_timeout, "
            "started_at, deadline_at, finished_at, purge_at, worker_id, lease_until, attempts, retries, "
            "output, error")


def _job(row: Any) -> Job:
    (jid, state, payload, webhook, low, sync, created, expires, timeout, started, dl, finished, purge,
     worker, lease, attempts, retries, output, error) = row
    return Job(
        id=str(jid), state=JobState(state), payload=str(payload), webhook=webhook,
        low_priority=bool(low), sync=bool(sync), created_at=float(created),
        expires_at=float(expires), execution_timeout=timeout,
        started_at=started, deadline_at=dl, finished_at=finished, purge_at=purge,
        worker_id=worker, lease_until=lease, attempts=int(attempts), retries=int(retries),
        output=output, error=error,
    )


class SqliteJobStore:
    """``JobStore`` on SQLite. All statements run on the writer thread; nothing blocks the event loop."""

    def __init__(self, path: str | Path, endpoint: str, retention: float, sync_retention: float) -> None:
        self.path = Path(path)
        self.endpoint = endpoint
        self.retention = retention
        self.sync_retention = sync_retention
        self.writer = Writer(str(self.path), self._setup)

    @staticmethod
    def _setup(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(SCHEMA)

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self.writer.start()

    async def close(self) -> None:
        await self.writer.stop()

    # -- helpers that run on the writer thread ------------------------------------------------------

    def _purge_at(self, job_sync: object, now: float) -> float:
        return now + (self.sync_retention if job_sync else self.retention)

    def _select(self, conn: sqlite3.Connection, where: str, args: Iterable[object]) -> list[Job]:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE endpoint = ? AND {where}",
                            (self.endpoint, *args)).fetchall()
        return [_job(r) for r in rows]

    def _one(self, conn: sqlite3.Connection, job_id: str) -> Job | None:
        # By id alone: with `endpoint = ?` too, the planner may walk the queue index instead of the id's.
        row = conn.execute(f"SELECT {_COLUMNS}, endpoint FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row[:-1]) if row is not None and row[-1] == self.endpoint else None

    @staticmethod
    def _drop_chunks(conn: sqlite3.Connection, ids: list[str]) -> None:
        conn.executemany("DELETE FROM chunks WHERE job_id = ?", [(i,) for i in ids])

    def _lose(self, conn: sqlite3.Connection, jobs: list[Job], now: float, max_attempts: int) -> list[Job]:
        """Jobs whose worker is gone: requeue, or FAILED after max_attempts (rule in jobs.after_worker_lost)."""
        out = []
        for job in jobs:
            if after_worker_lost(job.attempts, max_attempts) is JobState.IN_QUEUE:
                conn.execute(
                    "UPDATE jobs SET state = 'IN_QUEUE', worker_id = NULL, lease_until = NULL, started_at = NULL,"
                    " deadline_at = NULL, output = NULL, retries = retries + 1, chunk_seq = 0 WHERE id = ?",
                    (job.id,))
            else:
                conn.execute(
                    "UPDATE jobs SET state = 'FAILED', lease_until = NULL, deadline_at = NULL, finished_at = ?,"
                    " purge_at = ?, error = ? WHERE id = ?",
                    (now, self._purge_at(job.sync, now), f'"{WORKER_LOST}"', job.id))
            out.append(self._one(conn, job.id) or job)
        self._drop_chunks(conn, [j.id for j in out if j.state is JobState.IN_QUEUE])
        return out

    # -- JobStore --------------------------------------------------------------------------------------

    async def add(self, job: NewJob, now: float, on_committed: Callable[[Job], None] | None = None) -> Job:
        def op(conn: sqlite3.Connection) -> Job:
            try:
                conn.execute(
                    "INSERT INTO jobs (id, endpoint, state, payload, webhook, low_priority, sync, created_at,"
                    " expires_at, execution_timeout) VALUES (?, ?, 'IN_QUEUE', ?, ?, ?, ?, ?, ?, ?)",
                    (job.id, self.endpoint, job.payload, job.webhook, int(job.low_priority), int(job.sync), now,
                     now + job.ttl, job.execution_timeout))
            except sqlite3.IntegrityError:
                raise DuplicateJob(job.id) from None
            return Job(job.id, JobState.IN_QUEUE, job.payload, job.webhook, job.low_priority, job.sync, now,
                       now + job.ttl, job.execution_timeout)
        return await self.writer.run(op, visible=on_committed)

    async def get(self, job_id: str) -> Job | None:
        return await self.writer.run(lambda conn: self._one(conn, job_id), durable=False)

    async def claim(self, worker_id: str, n: int, now: float, lease: float) -> list[Job]:
        def op(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                "SELECT id, execution_timeout FROM jobs WHERE endpoint = ? AND state = 'IN_QUEUE'"
                " ORDER BY low_priority, created_at, seq LIMIT ?", (self.endpoint, n)).fetchall()
            if not rows:
                return []
            jobs = []
            for jid, timeout in rows:
                row = conn.execute(
                    "UPDATE jobs SET state = 'IN_PROGRESS', worker_id = ?, started_at = ?, lease_until = ?,"
                    f" deadline_at = ?, attempts = attempts + 1 WHERE id = ? RETURNING {_COLUMNS}",
                    (worker_id, now, now + lease, deadline(now, timeout), jid)).fetchone()
                jobs.append(_job(row))
            return jobs
        return await self.writer.run(op, durable=False)

    async def renew(self, worker_id: str, job_ids: list[str], until: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.executemany(
                "UPDATE jobs SET lease_until = max(lease_until, ?) WHERE id = ? AND worker_id = ?"
                " AND state = 'IN_PROGRESS'", [(until, jid, worker_id) for jid in job_ids])
            return cur.rowcount
        return await self.writer.run(op, durable=False) if job_ids else 0

    async def progress(self, job_id: str, worker_id: str, output: str | None) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("UPDATE jobs SET output = ? WHERE id = ? AND worker_id = ? AND state = 'IN_PROGRESS'",
                               (output, job_id, worker_id))
            return cur.rowcount > 0
        return await self.writer.run(op, durable=False)

    async def complete(self, job_id: str, worker_id: str, state: JobState, output: str | None,
                       error: str | None, now: float) -> Job | None:
        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute("SELECT sync FROM jobs WHERE id = ? AND worker_id = ? AND state = 'IN_PROGRESS'",
                               (job_id, worker_id)).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = ?, output = ?, error = ?, finished_at = ?, purge_at = ?,"
                " lease_until = NULL, deadline_at = NULL WHERE id = ?",
                (state.value, output, error, now, self._purge_at(row[0], now), job_id))
            return self._one(conn, job_id)
        return await self.writer.run(op)

    async def stop(self, job_id: str, state: JobState, error: str | None, now: float) -> Job | None:
        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute("SELECT sync FROM jobs WHERE id = ? AND endpoint = ? AND state IN"
                               " ('IN_QUEUE', 'IN_PROGRESS')", (job_id, self.endpoint)).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = ?, error = coalesce(?, error), finished_at = ?, purge_at = ?,"
                " lease_until = NULL, deadline_at = NULL WHERE id = ?",
                (state.value, error, now, self._purge_at(row[0], now), job_id))
            return self._one(conn, job_id)
        return await self.writer.run(op)

    async def add_chunk(self, job_id: str, worker_id: str, chunk: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "UPDATE jobs SET chunk_seq = chunk_seq + 1 WHERE id = ? AND worker_id = ? AND state = 'IN_PROGRESS'"
                " RETURNING chunk_seq", (job_id, worker_id)).fetchone()
            if row is None:
                return False
            conn.execute("INSERT INTO chunks (job_id, seq, data) VALUES (?, ?, ?)", (job_id, row[0], chunk))
            return True
        return await self.writer.run(op, durable=False)

    async def take_chunks(self, job_id: str) -> tuple[Job, list[str]] | None:
        def op(conn: sqlite3.Connection) -> tuple[Job, list[str]] | None:
            job = self._one(conn, job_id)
            if job is None:
                return None
            rows = conn.execute("SELECT seq, data FROM chunks WHERE job_id = ? ORDER BY seq", (job_id,)).fetchall()
            if rows:
                conn.execute("DELETE FROM chunks WHERE job_id = ? AND seq <= ?", (job_id, rows[-1][0]))
            return job, [str(data) for _, data in rows]
        return await self.writer.run(op, durable=False)

    async def retry(self, job_id: str, now: float) -> Job | None:
        def op(conn: sqlite3.Connection) -> Job | None:
            job = self._one(conn, job_id)
            if job is None or job.state not in RETRYABLE:
                return None
            conn.execute(
                "UPDATE jobs SET state = 'IN_QUEUE', created_at = ?, expires_at = ? + (expires_at - created_at),"
                " started_at = NULL, finished_at = NULL, purge_at = NULL, worker_id = NULL, lease_until = NULL,"
                " deadline_at = NULL, attempts = 0, output = NULL, error = NULL, chunk_seq = 0 WHERE id = ?",
                (now, now, job_id))
            self._drop_chunks(conn, [job_id])
            return self._one(conn, job_id)
        return await self.writer.run(op)

    async def purge_queue(self) -> int:
        def op(conn: sqlite3.Connection) -> int:
            cur = conn.execute("DELETE FROM jobs WHERE endpoint = ? AND state = 'IN_QUEUE'", (self.endpoint,))
            return cur.rowcount
        return await self.writer.run(op)

    async def release_worker(self, worker_id: str, now: float, max_attempts: int) -> list[Job]:
        def op(conn: sqlite3.Connection) -> list[Job]:
            jobs = self._select(conn, "state = 'IN_PROGRESS' AND worker_id = ?", (worker_id,))
            return self._lose(conn, jobs, now, max_attempts)
        return await self.writer.run(op)

    async def expire_leases(self, now: float, max_attempts: int) -> list[Job]:
        def op(conn: sqlite3.Connection) -> list[Job]:
            jobs = self._select(conn, "state = 'IN_PROGRESS' AND lease_until <= ? LIMIT ?", (now, SWEEP_BATCH))
            return self._lose(conn, jobs, now, max_attempts)
        return await self.writer.run(op)

    async def release_all(self, now: float, max_attempts: int) -> list[Job]:
        def op(conn: sqlite3.Connection) -> list[Job]:
            return self._lose(conn, self._select(conn, "state = 'IN_PROGRESS'", ()), now, max_attempts)
        return await self.writer.run(op)

    async def time_out(self, now: float) -> list[Job]:
        def op(conn: sqlite3.Connection) -> list[Job]:
            jobs = self._select(conn, "state = 'IN_PROGRESS' AND deadline_at <= ? LIMIT ?", (now, SWEEP_BATCH))
            conn.executemany(
                "UPDATE jobs SET state = 'TIMED_OUT', error = ?, finished_at = ?, purge_at = ?, lease_until = NULL,"
                " deadline_at = NULL WHERE id = ?",
                [(f'"{TIMED_OUT_ERROR}"', now, self._purge_at(j.sync, now), j.id) for j in jobs])
            return [self._one(conn, j.id) or j for j in jobs]
        return await self.writer.run(op)

    async def expire(self, now: float) -> list[Expired]:
        def op(conn: sqlite3.Connection) -> list[Expired]:
            rows = conn.execute("SELECT id, state, worker_id FROM jobs WHERE endpoint = ? AND expires_at <= ? LIMIT ?",
                                (self.endpoint, now, SWEEP_BATCH)).fetchall()
            ids = [r[0] for r in rows]
            conn.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
            self._drop_chunks(conn, ids)
            return [Expired(jid, JobState(st), wid if st == "IN_PROGRESS" else None) for jid, st, wid in rows]
        return await self.writer.run(op)

    async def purge_results(self, now: float) -> int:
        def op(conn: sqlite3.Connection) -> int:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM jobs WHERE endpoint = ? AND purge_at <= ? LIMIT ?",
                (self.endpoint, now, SWEEP_BATCH)).fetchall()]
            conn.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in ids])
            self._drop_chunks(conn, ids)
            return len(ids)
        return await self.writer.run(op)

    async def load(self) -> Load:
        def op(conn: sqlite3.Connection) -> Load:
            queued, oldest = conn.execute(
                "SELECT count(*), min(created_at) FROM jobs WHERE endpoint = ? AND state = 'IN_QUEUE'"
                " AND low_priority = 0", (self.endpoint,)).fetchone()
            (running,) = conn.execute("SELECT count(*) FROM jobs WHERE endpoint = ? AND state = 'IN_PROGRESS'",
                                      (self.endpoint,)).fetchone()
            return Load(int(queued), oldest, int(running))
        return await self.writer.run(op, durable=False)

    async def counts(self) -> JobCounts:
        def op(conn: sqlite3.Connection) -> JobCounts:
            by: dict[str, int] = {}
            for state, low, n in conn.execute(
                    "SELECT state, low_priority, count(*) FROM jobs WHERE endpoint = ? GROUP BY state, low_priority",
                    (self.endpoint,)):
                by[state] = by.get(state, 0) + n
                if state == "IN_QUEUE" and not low:
                    by["scaling"] = n
            (retried,) = conn.execute("SELECT count(*) FROM jobs WHERE endpoint = ? AND retries > 0",
                                      (self.endpoint,)).fetchone()
            (oldest,) = conn.execute("SELECT min(created_at) FROM jobs WHERE endpoint = ? AND state = 'IN_QUEUE'"
                                     " AND low_priority = 0", (self.endpoint,)).fetchone()
            return JobCounts(
                in_queue=by.get("IN_QUEUE", 0), in_progress=by.get("IN_PROGRESS", 0),
                completed=by.get("COMPLETED", 0), failed=by.get("FAILED", 0) + by.get("TIMED_OUT", 0),
                retried=int(retried), in_queue_for_scaling=by.get("scaling", 0), oldest_for_scaling=oldest)
        return await self.writer.run(op, durable=False)

    async def held_by(self, worker_id: str) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute("SELECT id FROM jobs WHERE worker_id = ? AND state = 'IN_PROGRESS'", (worker_id,))
            return [str(r[0]) for r in rows]
        return await self.writer.run(op, durable=False)
