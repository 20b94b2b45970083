"""What only the PostgreSQL store promises beyond the contract: replicas sharing one database safely, their
notifications, the schema's version table, and a database that goes away and comes back.

Every test runs on a real PostgreSQL server the suite started (pg_server.py), on a database of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from lbproxy.queue import pg_schema
from lbproxy.queue.jobs import JobState
from lbproxy.queue.locations import shown, store_kind
from lbproxy.queue.postgres import PostgresJobStore, channel_for
from lbproxy.queue.store import StoreUnavailable

from ..conftest import until
from .test_store_contract import RETENTION, SYNC_RETENTION, T0, new


class Heard:
    """StoreEvents that record what another replica reported."""

    def __init__(self) -> None:
        self.added = 0
        self.stops: list[tuple[str, str]] = []
        self.finished: list[str] = []
        self.resyncs = 0

    def jobs_added(self) -> None:
        self.added += 1

    def stop_job(self, worker_id: str, job_id: str) -> None:
        self.stops.append((worker_id, job_id))

    def job_finished(self, job_id: str) -> None:
        self.finished.append(job_id)

    def missed(self) -> None:
        self.resyncs += 1


@pytest.fixture
async def replicas(pg_url: str) -> AsyncIterator[Callable[..., Awaitable[tuple[PostgresJobStore, Heard]]]]:
    """``store, heard = await replica()``: one more store on the test's database, as another lbproxy would open."""
    opened: list[PostgresJobStore] = []

    async def replica(endpoint: str = "ep", **kwargs: object) -> tuple[PostgresJobStore, Heard]:
        store = PostgresJobStore(pg_url, endpoint, RETENTION, SYNC_RETENTION, **kwargs)  # type: ignore[arg-type]
        heard = Heard()
        store.listen(heard)
        await store.open()
        opened.append(store)
        return store, heard

    yield replica
    for store in opened:
        await store.close()


async def test_replicas_reaping_lapsed_leases_at_once_requeue_each_job_exactly_once(replicas):
    a, _ = await replicas()
    b, _ = await replicas()
    for i in range(300):
        await a.add(new(f"j{i}"), T0)
    taken = []
    for k in range(30):
        taken += await (a if k % 2 else b).claim(f"w{k}", 10, T0, 5)
    assert len(taken) == 300
    # Both replicas' sweepers reach the same lapsed leases at the same moment, several times over.
    rounds = await asyncio.gather(*(store.expire_leases(T0 + 10, 3) for _ in range(6) for store in (a, b)))
    requeued = [job.id for batch in rounds for job in batch]
    assert sorted(requeued) == sorted(f"j{i}" for i in range(300))  # each once, by whichever replica got there
    jobs = [await a.get(f"j{i}") for i in range(300)]
    assert {(j.state, j.retries, j.worker_id) for j in jobs} == {(JobState.IN_QUEUE, 1, None)}
    assert (await b.counts()).retried == 300


async def test_a_lost_job_past_max_attempts_fails_once_across_replicas(replicas):
    a, _ = await replicas()
    b, _ = await replicas()
    await a.add(new("x"), T0)
    await a.claim("w1", 1, T0, 5)
    results = await asyncio.gather(a.release_worker("w1", T0 + 1, 1), b.expire_leases(T0 + 10, 1))
    assert [j.state for batch in results for j in batch] == [JobState.FAILED]
    assert (await b.get("x")).error == '"worker lost"'


async def test_each_replica_hears_what_the_others_changed(replicas):
    a, heard_a = await replicas()
    b, heard_b = await replicas()
    await until(lambda: a.listening and b.listening, 10, "both sessions listening")
    before = heard_b.added
    await a.add(new("j"), T0)
    await until(lambda: heard_b.added > before, 10, "b hears of the new job")
    (job,) = await b.claim("w-b", 1, T0, 30)
    await a.stop(job.id, JobState.CANCELLED, None, T0 + 1)  # a client cancels on replica a
    await until(lambda: heard_b.stops, 10, "b hears the stop for its worker")
    assert heard_b.stops == [("w-b", "j")]
    await a.add(new("s", sync=True), T0)
    await b.claim("w-b", 1, T0, 30)
    await b.complete("s", "w-b", JobState.COMPLETED, '"ok"', None, T0 + 2)
    await until(lambda: "s" in heard_a.finished, 10, "a hears that the /runsync job finished")
    assert not heard_a.stops  # nobody reports to itself what it did
    assert heard_b.finished == []


async def test_endpoints_sharing_a_database_hear_only_their_own(replicas):
    a, _ = await replicas("one")
    b, heard_b = await replicas("two")
    c, heard_c = await replicas("one")
    await until(lambda: a.listening and b.listening and c.listening, 10, "sessions listening")
    before_b, before_c = heard_b.added, heard_c.added  # each heard "look again" once, when it connected
    await a.add(new("j"), T0)
    await until(lambda: heard_c.added > before_c, 10, "the same endpoint hears it")
    assert heard_b.added == before_b
    assert channel_for("x" * 63) != channel_for("x" * 62) and len(channel_for("x" * 63)) <= 63


async def test_the_schema_is_created_once_and_versioned(pg_url, replicas):
    first, _ = await replicas()
    second, _ = await replicas()
    assert first.migrated == [pg_schema.LATEST] and second.migrated == []
    conn = await asyncpg.connect(pg_url)
    try:
        rows = await conn.fetch("SELECT version, description FROM lbproxy_schema")
        assert [r["version"] for r in rows] == [m[0] for m in pg_schema.MIGRATIONS]
        await conn.execute("INSERT INTO lbproxy_schema (version, description) VALUES (999, 'from the future')")
    finally:
        await conn.close()
    with pytest.raises(pg_schema.SchemaError, match="newer than this lbproxy knows"):
        await replicas()


async def test_without_auto_migration_an_unmigrated_database_is_refused(pg_url, replicas):
    with pytest.raises(pg_schema.SchemaError, match="lbproxy queue migrate"):
        await replicas(migrate=False)
    await replicas()  # migrates
    store, _ = await replicas(migrate=False)
    await store.add(new("a"), T0)


async def test_concurrent_first_starts_migrate_once(pg_url):
    stores = [PostgresJobStore(pg_url, "ep", RETENTION, SYNC_RETENTION) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        assert sorted(len(s.migrated) for s in stores) == [0, 0, 0, 1]
    finally:
        for s in stores:
            await s.close()


async def test_a_database_restart_is_unavailable_then_served_again_and_notifications_resume(pg_server, replicas):
    a, _ = await replicas()
    b, heard_b = await replicas()
    await a.add(new("before"), T0)
    await until(lambda: b.listening, 10, "b listening")
    await asyncio.to_thread(pg_server.stop, "fast")
    try:
        with pytest.raises(StoreUnavailable) as down:
            await a.add(new("during"), T0)
        assert pg_server.password not in str(down.value) and "127.0.0.1" in str(down.value)
        await until(lambda: not b.listening, 10, "b notices its session is gone")
        resyncs = heard_b.resyncs  # read while the server is down: b may resync as soon as it is back
    finally:
        await asyncio.to_thread(pg_server.start)
    await until(lambda: b.listening, 20, "b listening again")
    assert heard_b.resyncs > resyncs  # told to look again at what it waits for

    async def served() -> bool:
        try:
            return (await a.get("before")) is not None
        except StoreUnavailable:
            return False
    await until(served, 20, "a served again by its pool")
    added = heard_b.added
    await a.add(new("after"), T0)
    await until(lambda: heard_b.added > added, 10, "b hears new jobs again")
    assert (await b.get("during")) is None and (await b.load()).queued == 2


async def test_a_wrong_password_is_refused_without_showing_it(pg_server):
    bad = pg_server.url("postgres").replace(pg_server.password, "not-the-password-42")
    store = PostgresJobStore(bad, "ep", RETENTION, SYNC_RETENTION)
    with pytest.raises(StoreUnavailable) as refused:
        await store.open()
    assert "not-the-password-42" not in str(refused.value) and "password authentication failed" in str(refused.value)


def test_store_urls_are_told_apart_and_shown_without_their_password():
    assert store_kind(None) == store_kind("sqlite:///x.db") == "sqlite"
    assert store_kind("postgresql://u:p@db:5432/jobs") == store_kind("postgres://db/jobs") == "postgresql"
    for bad in ("postgresql://u:secret@/jobs", "postgresql://u:secret@db:x/jobs", "postgresql://u:secret@db",
                "mysql://u:secret@db/jobs", "jobs.db"):
        with pytest.raises(ValueError) as refused:
            store_kind(bad)
        assert "secret" not in str(refused.value)
    assert shown("postgresql://u:secret@db:5432/jobs?password=x&sslmode=require") == "postgresql://u:***@db:5432/jobs"
    assert shown("postgresql://u@db/jobs") == "postgresql://u@db/jobs"
    assert shown("sqlite:///x.db") == "sqlite:///x.db"
