"""The PostgreSQL store's schema and its migrations, recorded in a version table.

Every replica may start at once: migrations run in one transaction under an advisory lock, so exactly one
applies them and the others then find the schema current. ``lbproxy queue migrate CONFIG`` runs the same
function for people who run migrations apart from the service (``queue.migrate: false`` then keeps ``serve``
from changing the schema: it only checks the version).

Tables are prefixed ``lbproxy_`` so that the database can be shared with other applications; one set of
tables holds every endpoint's jobs (rows carry their endpoint).
"""

from __future__ import annotations

from typing import Any

# A fixed advisory lock key for schema changes (any 64-bit number no other lbproxy lock uses).
MIGRATION_LOCK = 0x6C62_7078_6D69_6772  # "lbpxmigr"

# (version, what it does, statements). Append only: a released migration never changes.
MIGRATIONS: tuple[tuple[int, str, str], ...] = (
    (1, "jobs, stream chunks and replica heartbeats", """
CREATE TABLE lbproxy_jobs (
    seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id text NOT NULL UNIQUE,
    endpoint text NOT NULL,
    state text NOT NULL,
    payload text NOT NULL,
    webhook text,
    low_priority boolean NOT NULL,
    sync boolean NOT NULL,
    created_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    execution_timeout double precision,
    started_at double precision,
    deadline_at double precision,
    finished_at double precision,
    purge_at double precision,
    worker_id text,
    lease_until double precision,
    attempts integer NOT NULL DEFAULT 0,
    retries integer NOT NULL DEFAULT 0,
    output text,
    error text,
    chunk_seq integer NOT NULL DEFAULT 0
);
CREATE INDEX lbproxy_jobs_queue ON lbproxy_jobs (endpoint, low_priority, created_at, seq) WHERE state = 'IN_QUEUE';
CREATE INDEX lbproxy_jobs_worker ON lbproxy_jobs (worker_id) WHERE state = 'IN_PROGRESS';
CREATE INDEX lbproxy_jobs_lease ON lbproxy_jobs (endpoint, lease_until) WHERE state = 'IN_PROGRESS';
CREATE INDEX lbproxy_jobs_deadline ON lbproxy_jobs (endpoint, deadline_at) WHERE state = 'IN_PROGRESS';
CREATE INDEX lbproxy_jobs_expiry ON lbproxy_jobs (endpoint, expires_at);
CREATE INDEX lbproxy_jobs_purge ON lbproxy_jobs (endpoint, purge_at) WHERE purge_at IS NOT NULL;
CREATE TABLE lbproxy_chunks (
    job_id text NOT NULL REFERENCES lbproxy_jobs (id) ON DELETE CASCADE,
    seq integer NOT NULL,
    data text NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE lbproxy_replicas (
    endpoint text NOT NULL,
    replica text NOT NULL,
    workers integer NOT NULL,
    seen_at double precision NOT NULL,
    PRIMARY KEY (endpoint, replica)
);
"""),
)

LATEST = MIGRATIONS[-1][0]

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS lbproxy_schema (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


class SchemaError(Exception):
    """The database's schema cannot be used as it is; the message says what to do."""


async def current_version(conn: Any) -> int:
    """The highest applied migration (0: an empty database)."""
    exists = await conn.fetchval("SELECT to_regclass('lbproxy_schema') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM lbproxy_schema"))


async def migrate(conn: Any) -> list[int]:
    """Bring the schema to ``LATEST``; the versions applied now (none when it was current)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(_VERSION_TABLE)
        version = await current_version(conn)
        _refuse_newer(version)
        applied = []
        for number, description, statements in MIGRATIONS:
            if number > version:
                await conn.execute(statements)
                await conn.execute("INSERT INTO lbproxy_schema (version, description) VALUES ($1, $2)",
                                   number, description)
                applied.append(number)
        return applied


async def check(conn: Any) -> None:
    """``queue.migrate: false``: the schema must be current already. Raises SchemaError."""
    version = await current_version(conn)
    _refuse_newer(version)
    if version < LATEST:
        raise SchemaError(f"the job store's schema is at version {version}, this lbproxy needs {LATEST}: run "
                          f"`lbproxy queue migrate CONFIG` (or set queue.migrate: true)")


def _refuse_newer(version: int) -> None:
    if version > LATEST:
        raise SchemaError(f"the job store's schema is at version {version}, newer than this lbproxy knows "
                          f"({LATEST}): a newer lbproxy migrated it; upgrade this one")
