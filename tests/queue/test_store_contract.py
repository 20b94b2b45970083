"""The JobStore contract: every store (SQLite now, PostgreSQL in issue 13) passes exactly these tests.

A new store adds one entry to STORES. Times are plain numbers (the store never reads a clock).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from lbproxy.queue.jobs import JobState, NewJob
from lbproxy.queue.sqlite import SqliteJobStore
from lbproxy.queue.store import DuplicateJob, JobStore

RETENTION, SYNC_RETENTION = 100.0, 10.0
T0 = 1_000_000.0


def _sqlite(tmp: Path, endpoint: str) -> JobStore:
    return SqliteJobStore(tmp / "jobs.db", endpoint, RETENTION, SYNC_RETENTION)


# name -> factory(directory, endpoint name). Stores opened twice on one directory see the same jobs.
STORES: dict[str, Callable[[Path, str], JobStore]] = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(STORES))
async def open_store(request: pytest.FixtureRequest,
                     tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[JobStore]]]:
    opened: list[JobStore] = []

    async def open_one(endpoint: str = "ep") -> JobStore:
        store = STORES[request.param](tmp_path, endpoint)
        await store.open()
        opened.append(store)
        return store

    yield open_one
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_store: Callable[..., Awaitable[JobStore]]) -> JobStore:
    return await open_store()


def new(job_id: str, *, low: bool = False, ttl: float = 1000.0, timeout: float | None = 50.0,
        sync: bool = False, webhook: str | None = None) -> NewJob:
    return NewJob(job_id, json.dumps({"input": {"n": job_id}}), webhook, low, ttl, timeout, sync)


async def test_an_added_job_is_queued_and_reads_back(store):
    added = await store.add(new("a", webhook="http://127.0.0.1:1/h"), T0)
    got = await store.get("a")
    assert got == added
    assert got.state is JobState.IN_QUEUE and got.created_at == T0 and got.expires_at == T0 + 1000
    assert got.webhook == "http://127.0.0.1:1/h" and json.loads(got.payload) == {"input": {"n": "a"}}
    assert await store.get("missing") is None


async def test_an_id_is_stored_once(store):
    await store.add(new("a"), T0)
    with pytest.raises(DuplicateJob):
        await store.add(new("a"), T0 + 1)


async def test_claims_take_normal_jobs_first_then_the_oldest(store):
    await store.add(new("low-old", low=True), T0)
    await store.add(new("b"), T0 + 2)
    await store.add(new("a"), T0 + 1)
    taken = await store.claim("w1", 2, T0 + 3, 30)
    assert [j.id for j in taken] == ["a", "b"]
    assert [j.id for j in await store.claim("w2", 5, T0 + 3, 30)] == ["low-old"]
    assert await store.claim("w3", 5, T0 + 3, 30) == []


async def test_a_claim_sets_owner_lease_attempt_and_deadline(store):
    await store.add(new("a", timeout=50), T0)
    await store.add(new("b", timeout=None), T0)
    a, b = await store.claim("w1", 2, T0 + 5, 30)
    assert a.state is JobState.IN_PROGRESS and a.worker_id == "w1" and a.started_at == T0 + 5
    assert a.lease_until == T0 + 35 and a.attempts == 1 and a.deadline_at == T0 + 55
    assert b.deadline_at is None
    assert sorted(await store.held_by("w1")) == ["a", "b"]


async def test_concurrent_claims_never_hand_one_job_to_two_workers(store):
    for i in range(20):
        await store.add(new(f"j{i}"), T0 + i)
    batches = await asyncio.gather(*(store.claim(f"w{k}", 3, T0 + 30, 30) for k in range(10)))
    ids = [j.id for batch in batches for j in batch]
    assert sorted(ids) == sorted(f"j{i}" for i in range(20))


async def test_only_the_holder_completes_a_job_and_the_first_result_wins(store):
    await store.add(new("a"), T0)
    await store.claim("w1", 1, T0, 30)
    assert await store.complete("a", "w2", JobState.COMPLETED, '"forged"', None, T0 + 1) is None
    done = await store.complete("a", "w1", JobState.COMPLETED, '{"x":1}', None, T0 + 2)
    assert done is not None and done.state is JobState.COMPLETED and done.output == '{"x":1}'
    assert done.finished_at == T0 + 2 and done.purge_at == T0 + 2 + RETENTION
    assert await store.complete("a", "w1", JobState.FAILED, None, '"late"', T0 + 3) is None
    assert (await store.get("a")).output == '{"x":1}'


async def test_a_runsync_result_is_kept_for_the_sync_retention(store):
    await store.add(new("s", sync=True), T0)
    await store.claim("w1", 1, T0, 30)
    done = await store.complete("s", "w1", JobState.FAILED, None, '"boom"', T0 + 1)
    assert done.state is JobState.FAILED and done.error == '"boom"' and done.purge_at == T0 + 1 + SYNC_RETENTION


async def test_progress_lands_only_on_a_running_job_of_its_worker(store):
    await store.add(new("a"), T0)
    assert not await store.progress("a", "w1", '"early"')
    await store.claim("w1", 1, T0, 30)
    assert not await store.progress("a", "w2", '"other"')
    assert await store.progress("a", "w1", '{"pct":50}')
    assert (await store.get("a")).output == '{"pct":50}'
    await store.complete("a", "w1", JobState.COMPLETED, '"done"', None, T0 + 1)
    assert not await store.progress("a", "w1", '"after"')  # a late progress update never overwrites
    assert (await store.get("a")).output == '"done"'


async def test_cancel_of_a_queued_job_and_of_a_running_one(store):
    await store.add(new("q"), T0)
    await store.add(new("r"), T0 + 1)
    await store.claim("w1", 1, T0 + 1, 30)  # takes q (older)
    running = await store.stop("q", JobState.CANCELLED, None, T0 + 2)
    assert running.state is JobState.CANCELLED and running.worker_id == "w1"  # who must be told to stop
    queued = await store.stop("r", JobState.CANCELLED, None, T0 + 2)
    assert queued.state is JobState.CANCELLED and queued.worker_id is None
    assert await store.stop("r", JobState.CANCELLED, None, T0 + 3) is None  # already finished
    assert await store.complete("q", "w1", JobState.COMPLETED, '"late"', None, T0 + 4) is None
    assert await store.claim("w2", 5, T0 + 4, 30) == []


async def test_stream_chunks_are_returned_once_in_order(store):
    await store.add(new("g"), T0)
    assert not await store.add_chunk("g", "w1", '"early"')
    await store.claim("w1", 1, T0, 30)
    for i in range(3):
        assert await store.add_chunk("g", "w1", json.dumps(i))
    assert not await store.add_chunk("g", "w2", '"forged"')
    job, chunks = await store.take_chunks("g")
    assert chunks == ["0", "1", "2"] and job.state is JobState.IN_PROGRESS
    assert (await store.take_chunks("g"))[1] == []
    await store.add_chunk("g", "w1", '"3"')
    await store.complete("g", "w1", JobState.COMPLETED, "[]", None, T0 + 1)
    assert not await store.add_chunk("g", "w1", '"late"')
    job, chunks = await store.take_chunks("g")
    assert chunks == ['"3"'] and job.state is JobState.COMPLETED
    assert await store.take_chunks("missing") is None


async def test_retry_requeues_failed_and_timed_out_jobs_only_under_the_same_id(store):
    for jid in ("f", "t", "c"):
        await store.add(new(jid, ttl=100), T0)
    await store.claim("w1", 3, T0, 30)
    await store.add_chunk("f", "w1", '"old chunk"')
    await store.complete("f", "w1", JobState.FAILED, '"partial"', '"boom"', T0 + 1)
    await store.complete("c", "w1", JobState.COMPLETED, '"ok"', None, T0 + 1)
    await store.time_out(T0 + 60)
    assert (await store.get("t")).state is JobState.TIMED_OUT
    again = await store.retry("f", T0 + 70)
    assert again.state is JobState.IN_QUEUE and again.output is None and again.error is None
    assert again.attempts == 0 and again.created_at == T0 + 70 and again.expires_at == T0 + 170
    assert (await store.take_chunks("f"))[1] == []
    assert (await store.retry("t", T0 + 70)).state is JobState.IN_QUEUE
    assert await store.retry("c", T0 + 70) is None
    assert await store.retry("missing", T0 + 70) is None


async def test_purge_queue_removes_queued_jobs_only(store):
    for jid in ("a", "b", "c"):
        await store.add(new(jid), T0)
    await store.claim("w1", 1, T0, 30)
    assert await store.purge_queue() == 2
    assert await store.get("b") is None and (await store.get("a")).state is JobState.IN_PROGRESS


async def test_a_lost_worker_s_jobs_are_requeued_until_max_attempts_then_fail(store):
    await store.add(new("a"), T0)
    await store.claim("w1", 1, T0, 30)
    await store.add_chunk("a", "w1", '"from attempt 1"')
    (lost,) = await store.release_worker("w1", T0 + 1, 2)
    assert lost.state is JobState.IN_QUEUE and lost.worker_id is None and lost.retries == 1
    assert (await store.take_chunks("a"))[1] == []  # the next attempt streams afresh
    await store.claim("w2", 1, T0 + 2, 30)
    (failed,) = await store.release_worker("w2", T0 + 3, 2)
    assert failed.state is JobState.FAILED and failed.error == '"worker lost"' and failed.attempts == 2
    assert failed.purge_at == T0 + 3 + RETENTION
    assert (await store.counts()).retried == 1


async def test_renewed_leases_hold_and_lapsed_ones_requeue(store):
    await store.add(new("a"), T0)
    await store.add(new("b"), T0)
    await store.claim("w1", 2, T0, 10)
    assert await store.renew("w1", ["a", "missing"], T0 + 30) == 1
    assert await store.renew("w2", ["b"], T0 + 30) == 0  # not its job
    lost = await store.expire_leases(T0 + 15, 3)
    assert [j.id for j in lost] == ["b"] and lost[0].state is JobState.IN_QUEUE
    assert (await store.get("a")).state is JobState.IN_PROGRESS


async def test_release_all_requeues_every_running_job(store):
    await store.add(new("a"), T0)
    await store.add(new("b"), T0)
    await store.claim("w1", 1, T0, 30)
    lost = await store.release_all(T0 + 1, 3)
    assert [j.id for j in lost] == ["a"] and lost[0].state is JobState.IN_QUEUE


async def test_jobs_past_their_deadline_time_out_and_name_their_worker(store):
    await store.add(new("slow", timeout=10), T0)
    await store.add(new("free", timeout=None), T0)
    await store.claim("w1", 2, T0, 1000)
    assert await store.time_out(T0 + 9) == []
    (timed,) = await store.time_out(T0 + 10)
    assert timed.id == "slow" and timed.state is JobState.TIMED_OUT and timed.worker_id == "w1"
    assert timed.error == '"execution timeout exceeded"'
    assert await store.complete("slow", "w1", JobState.COMPLETED, '"late"', None, T0 + 11) is None


async def test_the_ttl_removes_a_job_in_any_state(store):
    await store.add(new("running", ttl=10), T0)
    await store.add(new("done", ttl=10), T0 + 0.5)
    await store.add(new("queued", ttl=9), T0 + 1)
    await store.add(new("young", ttl=100), T0 + 1)
    await store.claim("w1", 2, T0 + 1, 1000)
    await store.complete("done", "w1", JobState.COMPLETED, '"x"', None, T0 + 2)
    assert await store.expire(T0 + 9) == []
    gone = {e.id: e for e in await store.expire(T0 + 10.5)}
    assert set(gone) == {"queued", "running", "done"}
    assert gone["running"].worker_id == "w1"  # still running: its worker must stop
    assert gone["done"].worker_id is None and gone["queued"].worker_id is None
    for job_id in gone:
        assert await store.get(job_id) is None
    assert (await store.get("young")).state is JobState.IN_QUEUE


async def test_finished_jobs_are_deleted_when_their_retention_is_over(store):
    await store.add(new("a"), T0)
    await store.claim("w1", 1, T0, 30)
    await store.add_chunk("a", "w1", '"unread"')
    await store.complete("a", "w1", JobState.COMPLETED, '"x"', None, T0 + 1)
    assert await store.purge_results(T0 + RETENTION) == 0
    assert await store.purge_results(T0 + 1 + RETENTION) == 1
    assert await store.get("a") is None and await store.take_chunks("a") is None


async def test_load_and_counts_leave_low_priority_jobs_out_of_scaling(store):
    await store.add(new("low", low=True), T0)
    await store.add(new("n1"), T0 + 1)
    await store.add(new("n2"), T0 + 2)
    await store.add(new("n3"), T0 + 3)
    await store.claim("w1", 1, T0 + 4, 30)  # n1
    (x,) = await store.claim("w1", 1, T0 + 4, 30)
    await store.complete(x.id, "w1", JobState.FAILED, None, '"e"', T0 + 5)
    load = await store.load()
    assert (load.queued, load.oldest_created_at, load.in_progress) == (1, T0 + 3, 1)
    counts = await store.counts()
    assert (counts.in_queue, counts.in_progress, counts.completed, counts.failed) == (2, 1, 0, 1)
    assert counts.in_queue_for_scaling == 1 and counts.oldest_for_scaling == T0 + 3


async def test_endpoints_sharing_a_database_see_only_their_own_jobs(open_store):
    one, two = await open_store("one"), await open_store("two")
    await one.add(new("a"), T0)
    assert await two.claim("w", 5, T0, 30) == []
    assert (await two.load()).queued == 0 and await two.purge_queue() == 0
    assert (await one.load()).queued == 1


async def test_jobs_outlive_the_store(open_store):
    first = await open_store()
    await first.add(new("a"), T0)
    await first.close()
    again = await open_store()
    assert (await again.get("a")).state is JobState.IN_QUEUE
