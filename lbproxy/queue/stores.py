"""The job store a config names: SQLite (the default) or PostgreSQL (``queue.store: postgresql://...``)."""

from __future__ import annotations

from collections.abc import Mapping

from ..config import Config
from .locations import shown, store_kind, store_path
from .sqlite import SqliteJobStore
from .store import JobStore


def store_for(config: Config, environ: Mapping[str, str] | None = None) -> JobStore:
    q = config.queue
    if store_kind(q.store) == "postgresql":
        assert q.store is not None
        from .postgres import PostgresJobStore  # the postgres extra (asyncpg): `lbproxy check` says so if missing

        return PostgresJobStore(q.store, config.name, q.retention, q.sync_retention, q.migrate)
    return SqliteJobStore(store_path(config.name, q.store, environ), config.name, q.retention, q.sync_retention)


def described(config: Config, environ: Mapping[str, str] | None = None) -> str:
    """Where the jobs are, as logs and /status show it (a URL without its password, or the SQLite file)."""
    q = config.queue
    if store_kind(q.store) == "postgresql":
        return shown(q.store)
    return str(store_path(config.name, q.store, environ))
