"""The PostgreSQL job store (``queue.store: postgresql://...``): one queue that several lbproxy replicas share.

- Claims are one statement, ``UPDATE ... WHERE seq IN (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING``: replicas
  claiming at once never wait for each other and never get the same job.
- The sweeps (lapsed leases, timeouts, TTL, retention) lock the rows they change with ``SKIP LOCKED`` too, so
  whichever replica gets to a row first handles it and the others skip it; a row handled already no longer
  matches (its state changed), so a lost job is requeued exactly once.
- Changes other replicas must know of are sent with ``pg_notify`` on the endpoint's channel (delivered at
  commit) and received on a dedicated session (``pg_listen.Session``), which reconnects by itself.
- Errors that mean "the database is away" become StoreUnavailable (the APIs answer 503 or 429); messages
  name the host, never the URL (it may hold a password).

Durability: a commit returns once PostgreSQL has flushed it (``synchronous_commit`` on, its default), so a
job is on disk before ``/run`` answers, and so is a result. Claims, lease renewals, progress and stream
chunks commit without waiting for the disk (``_db(lazy=True)``: ``synchronous_commit`` off), as the SQLite
store does them: a database crash can undo only the last fraction of a second of them, which puts a claimed
job back in the queue (it runs again: at least once), and it takes one fsync off the way from a commit to a
waiting worker. Times are the service's wall clock, as with SQLite: replicas on several hosts need their
clocks in sync (NTP) to well within ``queue.lease``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from . import pg_schema
from .answers import JobCounts
from .jobs import RETRYABLE, TIMED_OUT_ERROR, WORKER_LOST, Job, JobState, NewJob, after_worker_lost
from .locations import shown
from .pg_listen import Session
from .store import DuplicateJob, Expired, Load, StoreEvents, StoreUnavailable

log = logging.getLogger("lbproxy.queue.postgres")

SWEEP_BATCH = 1000  # rows one sweep step changes: keeps every transaction short
POOL_SIZE = 10
LAZY_POOL_SIZE = 4  # connections for claims, renewals and chunks (synchronous_commit off): short statements
CONNECT_TIMEOUT = 5.0  # a database that is down answers /run with 503 within this, not after a minute
COMMAND_TIMEOUT = 30.0
MAX_PAYLOAD = 7900  # pg_notify's limit is 8000 bytes

_COLUMNS = ("id, state, payload, webhook, low_priority, sync, created_at, expires_at, execution_timeout, "
            "started_at, deadline_at, finished_at, purge_at, worker_id, lease_until, attempts, retries, "
            "output, error")

# Errors of a database that is away or going away (restart, failover, network), as opposed to a bug in a query.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError, asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    asyncpg.exceptions.InternalClientError,  # the pool resetting a connection the server just closed
)


def _job(row: Any) -> Job:
    return Job(
        id=row["id"], state=JobState(row["state"]), payload=row["payload"], webhook=row["webhook"],
        low_priority=row["low_priority"], sync=row["sync"], created_at=row["created_at"],
        expires_at=row["expires_at"], execution_timeout=row["execution_timeout"], started_at=row["started_at"],
        deadline_at=row["deadline_at"], finished_at=row["finished_at"], purge_at=row["purge_at"],
        worker_id=row["worker_id"], lease_until=row["lease_until"], attempts=row["attempts"],
        retries=row["retries"], output=row["output"], error=row["error"],
    )


def _count(status: str) -> int:
    """Rows a command changed, from its status tag (``UPDATE 3``)."""
    return int(status.rsplit(" ", 1)[-1])


def channel_for(endpoint: str) -> str:
    """The endpoint's notification channel (an identifier: at most 63 bytes)."""
    name = f"lbproxy:{endpoint}"
    return name if len(name) <= 63 else "lbproxy:" + hashlib.sha256(endpoint.encode()).hexdigest()[:32]


class PostgresJobStore:
    """``JobStore`` on PostgreSQL, shared by every replica of an endpoint."""

    shared = True

    def __init__(self, url: str, endpoint: str, retention: float, sync_retention: float,
                 migrate: bool = True) -> None:
        self.url = url
        self.endpoint = endpoint
        self.retention = retention
        self.sync_retention = sync_retention
        self.auto_migrate = migrate
        self.where = shown(url)
        parts = urlsplit(url)
        self.host = f"{parts.hostname}:{parts.port or 5432}"
        self.replica = secrets.token_hex(6)  # tags this process's notifications, so it can skip its own
        self.channel = channel_for(endpoint)
        self.pool: Any = None
        self.lazy_pool: Any = None  # the same database, commits not waiting for the disk (``_db(lazy=True)``)
        self.session: Session | None = None
        self._events: StoreEvents | None = None
        self.migrated: list[int] = []  # versions open() applied

    # -- lifecycle -----------------------------------------------------------------------------------

    def listen(self, events: StoreEvents) -> None:
        self._events = events

    @property
    def listening(self) -> bool:
        return self.session is not None and self.session.listening

    async def connect(self) -> Any:
        """One connection of its own (the notification session; ``lbproxy queue migrate``)."""
        return await asyncpg.connect(self.url, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT)

    async def open(self) -> None:
        """Connect, create or migrate the schema (or check it: ``queue.migrate: false``), start listening.
        Raises StoreUnavailable or pg_schema.SchemaError."""
        try:
            self.pool = await asyncpg.create_pool(
                # No floor of idle connections: the pool would retry (and log tracebacks) to keep one open while
                # the database is away; connections are made as requests need them.
                self.url, min_size=0, max_size=POOL_SIZE, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT,
                max_inactive_connection_lifetime=60.0)
            self.lazy_pool = await asyncpg.create_pool(
                self.url, min_size=0, max_size=LAZY_POOL_SIZE, timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT, max_inactive_connection_lifetime=60.0,
                server_settings={"synchronous_commit": "off"})
            async with self.pool.acquire() as conn:
                if self.auto_migrate:
                    self.migrated = await pg_schema.migrate(conn)
                else:
                    await pg_schema.check(conn)
        except _UNAVAILABLE as exc:
            await self.close()
            raise StoreUnavailable(self._reason(exc)) from None
        except asyncpg.PostgresError as exc:  # e.g. a wrong password, no such database, no right to create
            await self.close()
            raise StoreUnavailable(f"PostgreSQL at {self.host} refused: {exc}") from None
        except BaseException:
            await self.close()
            raise
        if self.migrated:
            log.info("job store %s: schema migrated to version %d", self.where, self.migrated[-1])
        self.session = Session(self.connect, self.channel, self._received, self._resync, self.where)
        await self.session.start()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()
            self.session = None
        for pool in (self.pool, self.lazy_pool):
            if pool is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await pool.close()
                pool.terminate()
        self.pool = self.lazy_pool = None

    def _reason(self, exc: BaseException) -> str:
        text = str(exc) or type(exc).__name__
        return f"PostgreSQL at {self.host} is unreachable: {text}"

    @contextlib.asynccontextmanager
    async def _db(self, lazy: bool = False) -> AsyncIterator[Any]:
        """A pooled connection; a database that is away raises StoreUnavailable. ``lazy``: one of a pool whose
        commits do not wait for the disk (see the module's "Durability"; a pool of its own, because a
        ``SET LOCAL`` per statement would cost three more round trips than the fsync it saves)."""
        pool = self.lazy_pool if lazy else self.pool
        if pool is None:
            raise StoreUnavailable("the job store is closed")
        try:
            async with pool.acquire() as conn:
                yield conn
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(self._reason(exc)) from None

    # -- notifications -------------------------------------------------------------------------------

    async def _notify(self, conn: Any, events: list[str]) -> None:
        """Tell the other replicas (sent at commit when ``conn`` is in a transaction)."""
        payload = self.replica
        for event in events:
            if len(payload) + len(event) + 1 > MAX_PAYLOAD:
                await conn.execute("SELECT pg_notify($1, $2)", self.channel, payload)
                payload = self.replica
            payload += "\n" + event
        if payload != self.replica:
            await conn.execute("SELECT pg_notify($1, $2)", self.channel, payload)

    def _received(self, payload: str) -> None:
        sender, *events = payload.split("\n")
        if sender == self.replica or self._events is None:
            return  # this process did it, and acted on it already
        added = False
        for event in events:
            kind, _, rest = event.partition(" ")
            if kind == "a":
                added = True
            elif kind == "s":
                worker_id, _, job_id = rest.partition(" ")
                self._events.stop_job(worker_id, job_id)
            elif kind == "f":
                self._events.job_finished(rest)
        if added:
            self._events.jobs_added()

    def _resync(self) -> None:
        if self._events is not None:
            self._events.jobs_added()
            self._events.missed()

    @staticmethod
    def _ended_events(jobs: list[Job]) -> list[str]:
        """What other replicas must do about jobs that just ended on lbproxy's side."""
        events = []
        for job in jobs:
            if job.worker_id is not None and job.state in (JobState.CANCELLED, JobState.TIMED_OUT):
                events.append(f"s {job.worker_id} {job.id}")
            if job.sync:
                events.append(f"f {job.id}")
        return events

    # -- JobStore ----------------------------------------------------------------------------------------

    async def add(self, job: NewJob, now: float, on_committed: Callable[[Job], None] | None = None) -> Job:
        async with self._db() as conn:
            try:
                await conn.execute(
                    "WITH ins AS (INSERT INTO lbproxy_jobs (id, endpoint, state, payload, webhook, low_priority,"
                    " sync, created_at, expires_at, execution_timeout) VALUES ($1, $2, 'IN_QUEUE', $3, $4, $5, $6,"
                    " $7, $8, $9) RETURNING 1) SELECT pg_notify($10, $11) FROM ins",
                    job.id, self.endpoint, job.payload, job.webhook, job.low_priority, job.sync, now, now + job.ttl,
                    job.execution_timeout, self.channel, f"{self.replica}\na")
            except asyncpg.UniqueViolationError:
                raise DuplicateJob(job.id) from None
        stored = Job(job.id, JobState.IN_QUEUE, job.payload, job.webhook, job.low_priority, job.sync, now,
                     now + job.ttl, job.execution_timeout)
        if on_committed is not None:
            on_committed(stored)
        return stored

    async def get(self, job_id: str) -> Job | None:
        async with self._db() as conn:
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM lbproxy_jobs WHERE id = $1 AND endpoint = $2",
                                      job_id, self.endpoint)
        return _job(row) if row is not None else None

    async def claim(self, worker_id: str, n: int, now: float, lease: float) -> list[Job]:
        async with self._db(lazy=True) as conn:
            # deadline_at = started + execution_timeout, NULL without one: jobs.deadline's rule, in SQL so that
            # the claim stays one statement.
            rows = await conn.fetch(
                "UPDATE lbproxy_jobs SET state = 'IN_PROGRESS', worker_id = $2, started_at = $3, lease_until = $4,"
                " deadline_at = $3 + execution_timeout, attempts = attempts + 1"
                " WHERE seq IN (SELECT seq FROM lbproxy_jobs WHERE endpoint = $1 AND state = 'IN_QUEUE'"
                " ORDER BY low_priority, created_at, seq LIMIT $5 FOR UPDATE SKIP LOCKED)"
                f" RETURNING {_COLUMNS}, seq", self.endpoint, worker_id, now, now + lease, n)
        rows.sort(key=lambda r: (r["low_priority"], r["created_at"], r["seq"]))
        return [_job(r) for r in rows]

    async def renew(self, worker_id: str, job_ids: list[str], until: float) -> int:
        if not job_ids:
            return 0
        async with self._db(lazy=True) as conn:
            status = await conn.execute(
                "UPDATE lbproxy_jobs SET lease_until = greatest(lease_until, $3) WHERE id = ANY($2::text[])"
                " AND worker_id = $1 AND state = 'IN_PROGRESS'", worker_id, job_ids, until)
        return _count(status)

    async def progress(self, job_id: str, worker_id: str, output: str | None) -> bool:
        async with self._db(lazy=True) as conn:
            status = await conn.execute(
                "UPDATE lbproxy_jobs SET output = $3 WHERE id = $1 AND worker_id = $2 AND state = 'IN_PROGRESS'",
                job_id, worker_id, output)
        return _count(status) > 0

    async def complete(self, job_id: str, worker_id: str, state: JobState, output: str | None,
                       error: str | None, now: float) -> Job | None:
        async with self._db() as conn:
            row = await conn.fetchrow(
                "UPDATE lbproxy_jobs SET state = $3, output = $4, error = $5, finished_at = $6,"
                " purge_at = $6 + CASE WHEN sync THEN $7::float8 ELSE $8::float8 END,"
                " lease_until = NULL, deadline_at = NULL"
                f" WHERE id = $1 AND worker_id = $2 AND state = 'IN_PROGRESS' RETURNING {_COLUMNS}",
                job_id, worker_id, state.value, output, error, now, self.sync_retention, self.retention)
            if row is None:
                return None
            job = _job(row)
            if job.sync:
                await self._notify(conn, [f"f {job.id}"])
        return job

    async def stop(self, job_id: str, state: JobState, error: str | None, now: float) -> Job | None:
        async with self._db() as conn:
            row = await conn.fetchrow(
                "UPDATE lbproxy_jobs SET state = $3, error = coalesce($4, error), finished_at = $5,"
                " purge_at = $5 + CASE WHEN sync THEN $6::float8 ELSE $7::float8 END,"
                " lease_until = NULL, deadline_at = NULL"
                " WHERE id = $1 AND endpoint = $2 AND state IN ('IN_QUEUE', 'IN_PROGRESS')"
                f" RETURNING {_COLUMNS}",
                job_id, self.endpoint, state.value, error, now, self.sync_retention, self.retention)
            if row is None:
                return None
            job = _job(row)
            await self._notify(conn, self._ended_events([job]))
        return job

    async def add_chunk(self, job_id: str, worker_id: str, chunk: str) -> bool:
        async with self._db(lazy=True) as conn:
            added = await conn.fetchval(
                "WITH j AS (UPDATE lbproxy_jobs SET chunk_seq = chunk_seq + 1 WHERE id = $1 AND worker_id = $2"
                " AND state = 'IN_PROGRESS' RETURNING chunk_seq)"
                " INSERT INTO lbproxy_chunks (job_id, seq, data) SELECT $1, chunk_seq, $3 FROM j RETURNING 1",
                job_id, worker_id, chunk)
        return added is not None

    async def take_chunks(self, job_id: str) -> tuple[Job, list[str]] | None:
        async with self._db(lazy=True) as conn:
            # The job first: a chunk added after its state was read is returned next time, with the state that
            # follows it; the other order could answer a final state with its last chunks still unread.
            row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM lbproxy_jobs WHERE id = $1 AND endpoint = $2",
                                      job_id, self.endpoint)
            if row is None:
                return None
            chunks = await conn.fetch("WITH d AS (DELETE FROM lbproxy_chunks WHERE job_id = $1 RETURNING seq, data)"
                                      " SELECT data FROM d ORDER BY seq", job_id)
        return _job(row), [r["data"] for r in chunks]

    async def retry(self, job_id: str, now: float) -> Job | None:
        async with self._db() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE lbproxy_jobs SET state = 'IN_QUEUE', created_at = $3,"
                " expires_at = $3 + (expires_at - created_at), started_at = NULL, finished_at = NULL,"
                " purge_at = NULL, worker_id = NULL, lease_until = NULL,"
                " deadline_at = NULL, attempts = 0, output = NULL, error = NULL, chunk_seq = 0"
                f" WHERE id = $1 AND endpoint = $2 AND state = ANY($4::text[]) RETURNING {_COLUMNS}",
                job_id, self.endpoint, now, [s.value for s in RETRYABLE])
            if row is None:
                return None
            await conn.execute("DELETE FROM lbproxy_chunks WHERE job_id = $1", job_id)
            await self._notify(conn, ["a"])
        return _job(row)

    async def purge_queue(self) -> int:
        async with self._db() as conn:
            return _count(await conn.execute("DELETE FROM lbproxy_jobs WHERE endpoint = $1 AND state = 'IN_QUEUE'",
                                             self.endpoint))

    async def _lose(self, now: float, max_attempts: int, where: str, *params: object) -> list[Job]:
        """Running jobs whose worker is gone, locked so that no other replica handles them too: requeued, or
        FAILED after max_attempts (the rule: jobs.after_worker_lost). ``where`` uses $2, $3... for ``params``."""
        async with self._db() as conn, conn.transaction():
            rows = await conn.fetch(
                f"SELECT seq, attempts FROM lbproxy_jobs WHERE endpoint = $1 AND state = 'IN_PROGRESS' AND {where}"
                " FOR UPDATE SKIP LOCKED", self.endpoint, *params)
            again = [r["seq"] for r in rows if after_worker_lost(r["attempts"], max_attempts) is JobState.IN_QUEUE]
            failed = [r["seq"] for r in rows if after_worker_lost(r["attempts"], max_attempts) is JobState.FAILED]
            out: list[Any] = []
            if again:
                out += await conn.fetch(
                    "UPDATE lbproxy_jobs SET state = 'IN_QUEUE', worker_id = NULL, lease_until = NULL,"
                    " started_at = NULL, deadline_at = NULL, output = NULL, retries = retries + 1, chunk_seq = 0"
                    f" WHERE seq = ANY($1::bigint[]) RETURNING {_COLUMNS}", again)
                await conn.execute("DELETE FROM lbproxy_chunks WHERE job_id = ANY($1::text[])",
                                   [r["id"] for r in out])
            if failed:
                out += await conn.fetch(
                    "UPDATE lbproxy_jobs SET state = 'FAILED', lease_until = NULL, deadline_at = NULL,"
                    " finished_at = $2, purge_at = $2 + CASE WHEN sync THEN $3::float8 ELSE $4::float8 END,"
                    f" error = $5 WHERE seq = ANY($1::bigint[]) RETURNING {_COLUMNS}",
                    failed, now, self.sync_retention, self.retention, f'"{WORKER_LOST}"')
            jobs = [_job(r) for r in out]
            events = ["a"] if again else []
            events += [f"f {j.id}" for j in jobs if j.sync and j.state is JobState.FAILED]
            await self._notify(conn, events)
        return jobs

    async def release_worker(self, worker_id: str, now: float, max_attempts: int) -> list[Job]:
        return await self._lose(now, max_attempts, "worker_id = $2", worker_id)

    async def expire_leases(self, now: float, max_attempts: int) -> list[Job]:
        return await self._lose(now, max_attempts, "lease_until <= $2 ORDER BY lease_until LIMIT $3", now, SWEEP_BATCH)

    async def release_all(self, now: float, max_attempts: int) -> list[Job]:
        return await self._lose(now, max_attempts, "true")

    async def time_out(self, now: float) -> list[Job]:
        async with self._db() as conn:
            rows = await conn.fetch(
                "UPDATE lbproxy_jobs SET state = 'TIMED_OUT', error = $3, finished_at = $2,"
                " purge_at = $2 + CASE WHEN sync THEN $5::float8 ELSE $6::float8 END,"
                " lease_until = NULL, deadline_at = NULL"
                " WHERE seq IN (SELECT seq FROM lbproxy_jobs WHERE endpoint = $1 AND state = 'IN_PROGRESS'"
                f" AND deadline_at <= $2 LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING {_COLUMNS}",
                self.endpoint, now, f'"{TIMED_OUT_ERROR}"', SWEEP_BATCH, self.sync_retention, self.retention)
            jobs = [_job(r) for r in rows]
            await self._notify(conn, self._ended_events(jobs))
        return jobs

    async def expire(self, now: float) -> list[Expired]:
        async with self._db() as conn:
            rows = await conn.fetch(
                "DELETE FROM lbproxy_jobs WHERE seq IN (SELECT seq FROM lbproxy_jobs WHERE endpoint = $1"
                " AND expires_at <= $2 LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING id, state, worker_id, sync",
                self.endpoint, now, SWEEP_BATCH)
            gone = [Expired(r["id"], JobState(r["state"]), r["worker_id"] if r["state"] == "IN_PROGRESS" else None)
                    for r in rows]
            events = [f"s {e.worker_id} {e.id}" for e in gone if e.worker_id is not None]
            events += [f"f {r['id']}" for r in rows if r["sync"]]
            await self._notify(conn, events)
        return gone

    async def purge_results(self, now: float) -> int:
        async with self._db() as conn:
            return _count(await conn.execute(
                "DELETE FROM lbproxy_jobs WHERE seq IN (SELECT seq FROM lbproxy_jobs WHERE endpoint = $1"
                " AND purge_at <= $2 LIMIT $3 FOR UPDATE SKIP LOCKED)", self.endpoint, now, SWEEP_BATCH))

    async def load(self) -> Load:
        async with self._db() as conn:
            # Each count on its partial index: the retained results (most rows, often) are never scanned.
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM lbproxy_jobs WHERE endpoint = $1 AND state = 'IN_QUEUE'"
                " AND NOT low_priority) AS queued,"
                " (SELECT min(created_at) FROM lbproxy_jobs WHERE endpoint = $1 AND state = 'IN_QUEUE'"
                " AND NOT low_priority) AS oldest,"
                " (SELECT count(*) FROM lbproxy_jobs WHERE endpoint = $1 AND state = 'IN_PROGRESS') AS running",
                self.endpoint)
        return Load(int(row["queued"]), row["oldest"], int(row["running"]))

    async def counts(self) -> JobCounts:
        async with self._db() as conn:
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE state = 'IN_QUEUE') AS in_queue,"
                " count(*) FILTER (WHERE state = 'IN_QUEUE' AND NOT low_priority) AS scaling,"
                " min(created_at) FILTER (WHERE state = 'IN_QUEUE' AND NOT low_priority) AS oldest,"
                " count(*) FILTER (WHERE state = 'IN_PROGRESS') AS in_progress,"
                " count(*) FILTER (WHERE state = 'COMPLETED') AS completed,"
                " count(*) FILTER (WHERE state IN ('FAILED', 'TIMED_OUT')) AS failed,"
                " count(*) FILTER (WHERE retries > 0) AS retried"
                " FROM lbproxy_jobs WHERE endpoint = $1", self.endpoint)
        return JobCounts(in_queue=row["in_queue"], in_progress=row["in_progress"], completed=row["completed"],
                         failed=row["failed"], retried=row["retried"], in_queue_for_scaling=row["scaling"],
                         oldest_for_scaling=row["oldest"])

    # -- replicas (local backend): who leads, and how many workers the others run ---------------------

    async def beat(self, workers: int, now: float) -> None:
        """Record this replica's worker count (read by the leader to count followers' workers)."""
        async with self._db() as conn:
            await conn.execute(
                "INSERT INTO lbproxy_replicas (endpoint, replica, workers, seen_at) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (endpoint, replica) DO UPDATE SET workers = $3, seen_at = $4",
                self.endpoint, self.replica, workers, now)

    async def others_workers(self, since: float) -> int:
        """Workers of the other replicas that reported since ``since`` (older rows are deleted: gone)."""
        async with self._db() as conn:
            await conn.execute("DELETE FROM lbproxy_replicas WHERE endpoint = $1 AND seen_at < $2",
                               self.endpoint, since)
            total = await conn.fetchval("SELECT coalesce(sum(workers), 0) FROM lbproxy_replicas WHERE endpoint = $1"
                                        " AND replica <> $2", self.endpoint, self.replica)
        return int(total)

    async def leave(self) -> None:
        """At shutdown: no longer counted by the leader."""
        with contextlib.suppress(StoreUnavailable):
            async with self._db() as conn:
                await conn.execute("DELETE FROM lbproxy_replicas WHERE endpoint = $1 AND replica = $2",
                                   self.endpoint, self.replica)

    async def held_by(self, worker_id: str) -> list[str]:
        async with self._db() as conn:
            rows = await conn.fetch("SELECT id FROM lbproxy_jobs WHERE worker_id = $1 AND state = 'IN_PROGRESS'"
                                    " AND endpoint = $2", worker_id, self.endpoint)
        return [r["id"] for r in rows]
