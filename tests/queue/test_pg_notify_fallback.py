"""A replica whose notification session is gone still hands jobs to its waiting workers: its long polls look at
the store every FALLBACK_POLL seconds until the session is back, then a NOTIFY wakes them again at once.

In-process: two replicas' stores on the suite's real PostgreSQL server, replica b's real QueueService with one
worker session. Its LISTEN backend is ended by the server (pg_terminate_backend), and its reconnects refused
meanwhile, as when the network to the database drops for that one connection; the pool keeps working.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lbproxy.config import parse_config
from lbproxy.policy import WorkerState
from lbproxy.pool import WorkerPool
from lbproxy.queue import service as service_module
from lbproxy.queue.jobs import NewJob
from lbproxy.queue.postgres import PostgresJobStore
from lbproxy.queue.service import QueueService

from ..conftest import until

HOLD = 60.0  # a job-take poll held this long: only the fallback (or a NOTIFY) answers it sooner


def _job(job_id: str) -> NewJob:
    return NewJob(job_id, '{"input": {}}', None, False, 600.0, 60.0, False)


async def _waiting_take(service: QueueService, store: PostgresJobStore, session: Any) -> asyncio.Task[list[Any]]:
    """A job-take poll that has claimed once, found nothing, and now waits (so a job added next is one it must
    be told about, or find by polling)."""
    claims: list[int] = []
    real_claim = store.claim

    async def counted(*args: Any, **kwargs: Any) -> Any:
        jobs = await real_claim(*args, **kwargs)
        claims.append(len(jobs))
        return jobs
    store.claim = counted  # type: ignore[method-assign]
    try:
        take = asyncio.create_task(service.take(session, 1))
        await until(lambda: claims[:1] == [0] or take.done(), 20, "the poll's first claim to come back empty")
    finally:
        store.claim = real_claim  # type: ignore[method-assign]
    assert not take.done()
    return take


@pytest.fixture
async def replica_b(pg_url: str) -> AsyncIterator[tuple[PostgresJobStore, QueueService, Any]]:
    config = parse_config({"name": "ep", "type": "queue", "worker": {"command": ["w"]},
                           "queue": {"store": pg_url, "take_hold": f"{HOLD:.0f}s"}}, environ={})
    pool = WorkerPool(0, 10, 5.0)
    store = PostgresJobStore(pg_url, "ep", 100.0, 10.0)
    service = QueueService(config, store, pool, retire=lambda worker_id, why: None)
    await service.start()
    session = service.session_for("w1")
    pool.set_state(pool.add("w1", "127.0.0.1", 1, 1), WorkerState.STARTING)
    try:
        yield store, service, session
    finally:
        await service.close()


async def test_a_worker_gets_jobs_by_polling_while_notifications_are_down_and_by_notify_once_back(
        pg_url, pg_server, replica_b):
    b, service, session = replica_b
    a = PostgresJobStore(pg_url, "ep", 100.0, 10.0)
    await a.open()
    try:
        assert b.session is not None and b.listening
        reconnect = b.session._connect
        refused = asyncio.Event()

        async def cut_off() -> Any:
            refused.set()
            raise OSError("network unreachable (test)")
        b.session._connect = cut_off
        pid = b.session.conn.get_server_pid()
        assert pg_server.sql(f"SELECT pg_terminate_backend({pid})") == "t"
        await until(lambda: refused.is_set() and not b.listening, 20, "b's session down and refused")

        take = await _waiting_take(service, b, session)
        await a.add(_job("during"), time.time())  # a's NOTIFY goes out; b, not listening, cannot hear it
        jobs = await asyncio.wait_for(take, service_module.FALLBACK_POLL * 10)  # far sooner than HOLD
        assert [j.id for j in jobs] == ["during"]

        b.session._connect = reconnect
        await until(lambda: b.listening, 20, "b listening again (back-off at most MAX_RETRY)")
        take = await _waiting_take(service, b, session)
        await a.add(_job("after"), time.time())  # listening: the poll waits HOLD, so only a NOTIFY answers soon
        jobs = await asyncio.wait_for(take, 10)
        assert [j.id for j in jobs] == ["after"]
    finally:
        await a.close()
