"""What only the SQLite store promises beyond the contract: WAL, durable commits, grouped."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from lbproxy.queue.locations import sqlite_path, store_path
from lbproxy.queue.sqlite import SqliteJobStore

from .test_store_contract import T0, new


@pytest.fixture
async def store(tmp_path):
    store = SqliteJobStore(tmp_path / "q.db", "ep", 100, 10)
    await store.open()
    yield store
    await store.close()


async def test_concurrent_writes_share_commits_and_fsyncs(store):
    await asyncio.gather(*(store.add(new(f"j{i}"), T0) for i in range(500)))
    assert store.writer.operations == 500
    assert store.writer.batches < 100 and store.writer.syncs <= store.writer.batches  # one fsync, many jobs


async def test_durable_writes_wait_for_an_fsync_of_the_wal_and_others_do_not(store, tmp_path):
    mode = await store.writer.run(lambda c: c.execute("PRAGMA journal_mode").fetchone()[0], durable=False)
    assert mode == "wal" and store.writer.syncs == 0
    seen: list[str] = []
    await store.add(new("a"), T0, on_committed=lambda job: seen.append(job.id))
    assert store.writer.syncs == 1 and seen == ["a"]  # answered after its fsync, visible before it
    await store.claim("w", 1, T0, 30)
    await store.get("a")
    assert store.writer.syncs == 1  # a claim or a read waits for no disk
    # Another reader sees the committed job while lbproxy holds the file (WAL).
    with sqlite3.connect(tmp_path / "q.db") as other:
        assert other.execute("SELECT id FROM jobs").fetchall() == [("a",)]


async def test_one_failing_operation_does_not_undo_the_others_in_its_batch(store):
    results = await asyncio.gather(store.add(new("a"), T0), store.add(new("a"), T0), store.add(new("b"), T0),
                                   return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["Job", "DuplicateJob", "Job"]
    assert (await store.load()).queued == 2


def test_store_urls_and_the_default_file(tmp_path):
    assert sqlite_path("sqlite:///var/lib/q.db") == "/var/lib/q.db"
    assert sqlite_path("sqlite:rel.db") == "rel.db"
    for bad in ("postgres://h/db", "sqlite://", "sqlite://host/x.db"):
        with pytest.raises(ValueError):
            sqlite_path(bad)
    assert store_path("ep", None, {"LBPROXY_DATA_DIR": str(tmp_path)}) == tmp_path / "ep.queue.db"
    assert str(store_path("ep", "sqlite:///x/y.db", {})) == "/x/y.db"
