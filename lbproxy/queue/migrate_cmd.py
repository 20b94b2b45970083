"""``lbproxy queue migrate CONFIG``: create or migrate a PostgreSQL store's schema apart from ``serve``.

For people who run migrations as a step of their own (a database user allowed to change the schema, with
``queue.migrate: false`` for the service's user). The same function ``serve`` runs, under the same lock.
"""

from __future__ import annotations

import asyncio
import sys

from ..config import Config
from .locations import shown, store_kind


def migrate(config: Config) -> int:
    """Exit code: 0 migrated or current, 1 the database refused or is unreachable."""
    if store_kind(config.queue.store) != "postgresql":
        print(f"{config.name}: queue.store is SQLite; lbproxy serve creates and keeps its tables itself: nothing "
              "to migrate")
        return 0
    return asyncio.run(_migrate(config))


async def _migrate(config: Config) -> int:
    from . import pg_schema
    from .postgres import PostgresJobStore
    from .store import StoreUnavailable

    url = config.queue.store
    assert url is not None
    store = PostgresJobStore(url, config.name, config.queue.retention, config.queue.sync_retention)
    try:
        conn = await store.connect()
    except Exception as exc:  # asyncpg's and the socket's errors: the host, never the URL
        print(f"lbproxy: cannot reach the job store {shown(url)}: {StoreUnavailable(store._reason(exc))}",
              file=sys.stderr)
        return 1
    try:
        before = await pg_schema.current_version(conn)
        applied = await pg_schema.migrate(conn)
    except pg_schema.SchemaError as exc:
        print(f"lbproxy: {shown(url)}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"lbproxy: migrating {shown(url)} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        await conn.close()
    if applied:
        print(f"{shown(url)}: schema migrated from version {before} to {applied[-1]} ({len(applied)} migration(s))")
    else:
        print(f"{shown(url)}: schema already at version {pg_schema.LATEST}; nothing to do")
    return 0
