"""The worker pool: slots, the FIFO queue of waiting requests, drains and shutdown, on a real event loop.

Tasks are synchronised by yielding to the loop (``settle``), never by sleeping; the only real waits are the
short ``timeouts.wait`` the timeout tests are about.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from lbproxy.policy import WorkerState, WorkerView
from lbproxy.pool import NoWorkerInTime, QueueFull, ShuttingDown, Slot, Worker, WorkerGone, WorkerPool


class FakeClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_pool(
    concurrency: int = 1, max_queue: int = 10, wait_timeout: float = 30.0, clock: FakeClock | None = None
) -> WorkerPool:
    return WorkerPool(concurrency, max_queue, wait_timeout, clock or FakeClock())


def add(pool: WorkerPool, wid: str) -> Worker:
    return pool.add(wid, "127.0.0.1", 9000, 9001)


def ready_worker(pool: WorkerPool, wid: str) -> Worker:
    w = add(pool, wid)
    pool.set_state(w, WorkerState.READY, "/ping 200")
    return w


# The pool hands out Slot handles; these keep the tests in terms of workers. A test's slots are kept per pool.
_held: dict[int, dict[str, list[Slot]]] = {}


def _keep(pool: WorkerPool, slot: Slot | None) -> Worker | None:
    if slot is None:
        return None
    _held.setdefault(id(pool), {}).setdefault(slot.worker.id, []).append(slot)
    return slot.worker


def try_acquire(pool: WorkerPool, preferred: str | None = None, strict: bool = False) -> Worker | None:
    return _keep(pool, pool.try_reserve(preferred, strict))


async def acquire(pool: WorkerPool, preferred: str | None = None, strict: bool = False) -> Worker:
    w = _keep(pool, await pool.reserve(preferred, strict))
    assert w is not None
    return w


def release(pool: WorkerPool, w: Worker, failed: bool = False) -> None:
    _held[id(pool)][w.id].pop().release(failed)


async def settle(predicate: Callable[[], object], what: str, turns: int = 50) -> None:
    """Let other tasks run, one loop turn at a time, until ``predicate()`` holds."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{what}: not after {turns} loop turns")


async def waiting(pool: WorkerPool, preferred: str | None = None) -> asyncio.Task[Worker]:
    """Start an ``acquire`` and return once it is queued."""
    before = pool.queued
    task = asyncio.create_task(acquire(pool, preferred))
    await settle(lambda: pool.queued == before + 1, "request queued")
    return task


# -- taking a slot -------------------------------------------------------------------------------------


async def test_acquire_takes_a_free_slot_at_once() -> None:
    pool = make_pool(concurrency=2)
    w = ready_worker(pool, "a")
    assert await acquire(pool) is w
    assert (w.in_flight, w.idle_since, pool.queued) == (1, None, 0)


async def test_acquire_prefers_the_requested_worker() -> None:
    pool = make_pool(concurrency=2)
    ready_worker(pool, "a")
    b = ready_worker(pool, "b")
    assert await acquire(pool, preferred="b") is b


async def test_try_acquire_gives_none_without_a_ready_worker() -> None:
    pool = make_pool()
    add(pool, "a")
    assert try_acquire(pool) is None
    assert pool.queued == 0


async def test_unhealthy_worker_gets_no_requests() -> None:
    pool = make_pool()
    w = ready_worker(pool, "a")
    pool.set_state(w, WorkerState.UNHEALTHY, "/ping did not answer")
    assert pool.ready == ()
    assert try_acquire(pool) is None


# -- the FIFO queue ------------------------------------------------------------------------------------


async def test_waiters_are_served_in_arrival_order_as_slots_free() -> None:
    pool = make_pool(concurrency=1)
    w = ready_worker(pool, "a")
    await acquire(pool)
    served: list[str] = []

    async def client(name: str) -> None:
        await acquire(pool)
        served.append(name)

    tasks = []
    for name in ("first", "second", "third"):
        tasks.append(asyncio.create_task(client(name)))
        await settle(lambda: pool.queued == len(tasks), "request queued")

    async def free_a_slot() -> list[str]:
        release(pool, w)  # the slot goes straight to the oldest waiter
        assert w.in_flight == 1
        count = len(served) + 1
        await settle(lambda: len(served) == count, "waiter served")
        return list(served)

    assert await free_a_slot() == ["first"]
    assert await free_a_slot() == ["first", "second"]
    assert await free_a_slot() == ["first", "second", "third"]
    await asyncio.gather(*tasks)
    assert pool.queued == 0


async def test_a_ready_worker_serves_as_many_waiters_as_it_has_slots() -> None:
    pool = make_pool(concurrency=2)
    w = add(pool, "a")
    tasks = [await waiting(pool) for _ in range(3)]
    pool.set_state(w, WorkerState.READY, "/ping 200")
    assert (w.in_flight, pool.queued) == (2, 1)
    assert [await t for t in tasks[:2]] == [w, w]
    pool.close()
    with pytest.raises(ShuttingDown):
        await tasks[2]


async def test_wait_longer_than_wait_timeout_fails_with_no_worker_in_time() -> None:
    pool = make_pool(wait_timeout=0.05)
    add(pool, "a")
    with pytest.raises(NoWorkerInTime):
        await acquire(pool)
    assert pool.queued == 0


async def test_request_beyond_max_queue_fails_with_queue_full() -> None:
    pool = make_pool(max_queue=2)
    tasks = [await waiting(pool), await waiting(pool)]
    with pytest.raises(QueueFull):
        await acquire(pool)
    assert pool.queued == 2
    pool.close()
    for t in tasks:
        with pytest.raises(ShuttingDown):
            await t


async def test_max_queue_zero_refuses_every_wait() -> None:
    pool = make_pool(max_queue=0)
    with pytest.raises(QueueFull):
        await acquire(pool)


async def test_queueing_with_no_ready_worker_calls_for_a_cold_start() -> None:
    pool = make_pool()
    calls: list[None] = []
    pool.on_queued_without_worker(lambda: calls.append(None))
    task = await waiting(pool)
    assert len(calls) == 1
    pool.close()
    with pytest.raises(ShuttingDown):
        await task


async def test_queueing_behind_a_full_ready_worker_does_not_call_for_a_cold_start() -> None:
    pool = make_pool(concurrency=1)
    w = ready_worker(pool, "a")
    await acquire(pool)
    calls: list[None] = []
    pool.on_queued_without_worker(lambda: calls.append(None))
    task = await waiting(pool)
    assert calls == []
    release(pool, w)
    assert await task is w


# -- state transitions ---------------------------------------------------------------------------------


async def test_worker_becoming_ready_serves_the_waiting_request() -> None:
    pool = make_pool()
    w = add(pool, "a")
    task = await waiting(pool)
    pool.set_state(w, WorkerState.READY, "/ping 200")
    assert await task is w
    assert (w.in_flight, pool.queued) == (1, 0)


async def test_worker_recovering_from_unhealthy_serves_the_waiting_request() -> None:
    pool = make_pool()
    w = ready_worker(pool, "a")
    pool.set_state(w, WorkerState.UNHEALTHY, "/ping 500")
    task = await waiting(pool)
    pool.set_state(w, WorkerState.READY, "/ping 200 again")
    assert await task is w


@pytest.mark.parametrize("state", [WorkerState.DRAINING, WorkerState.STOPPING])
async def test_late_ready_does_not_bring_back_a_worker_being_scaled_down(state: WorkerState) -> None:
    pool = make_pool()
    w = ready_worker(pool, "a")
    pool.set_state(w, state, "idle")
    pool.set_state(w, WorkerState.READY, "/ping 200")
    assert w.state is state
    assert pool.ready == ()
    assert try_acquire(pool) is None


async def test_exited_worker_is_removed_from_the_pool() -> None:
    pool = make_pool()
    w = ready_worker(pool, "a")
    pool.set_state(w, WorkerState.EXITED, "killed")
    assert pool.get("a") is None
    assert pool.ready == ()
    assert pool.snapshot().workers == ()
    assert w.drained.is_set()


async def test_exited_worker_stays_exited() -> None:
    pool = make_pool()
    w = add(pool, "a")
    pool.set_state(w, WorkerState.EXITED, "crashed")
    pool.set_state(w, WorkerState.READY, "/ping 200")
    assert w.state is WorkerState.EXITED
    assert pool.ready == ()


async def test_listeners_see_every_state_change_with_the_old_state() -> None:
    pool = make_pool()
    seen: list[tuple[str, WorkerState, WorkerState]] = []
    pool.on_state_change(lambda w, old: seen.append((w.id, old, w.state)))
    w = ready_worker(pool, "a")
    pool.set_state(w, WorkerState.READY, "/ping 200")  # no change: no event
    pool.set_state(w, WorkerState.EXITED, "gone")
    assert seen == [
        ("a", WorkerState.EXITED, WorkerState.STARTING),
        ("a", WorkerState.STARTING, WorkerState.READY),
        ("a", WorkerState.READY, WorkerState.EXITED),
    ]


# -- drain ---------------------------------------------------------------------------------------------


async def test_drained_worker_gets_no_new_requests() -> None:
    pool = make_pool(concurrency=1)
    a = ready_worker(pool, "a")
    b = ready_worker(pool, "b")
    pool.drain(a)
    assert pool.ready == (b,)
    assert try_acquire(pool, preferred="a") is b
    assert try_acquire(pool) is None


async def test_drain_of_an_idle_worker_is_done_at_once() -> None:
    pool = make_pool()
    w = ready_worker(pool, "a")
    assert pool.drain(w).is_set()


async def test_drain_is_done_when_the_last_request_ends() -> None:
    pool = make_pool(concurrency=2)
    w = ready_worker(pool, "a")
    first, second = await acquire(pool), await acquire(pool)
    drained = pool.drain(w)
    assert w.state is WorkerState.DRAINING
    assert not drained.is_set()
    release(pool, first)
    assert not drained.is_set()
    release(pool, second)
    assert drained.is_set()


async def test_drain_waits_for_requests_after_a_recovery_from_unhealthy() -> None:
    pool = make_pool(concurrency=2)
    w = ready_worker(pool, "a")
    earlier = await acquire(pool)
    pool.set_state(w, WorkerState.UNHEALTHY, "connection refused")
    release(pool, earlier)  # that request ends while the worker is unhealthy
    pool.set_state(w, WorkerState.READY, "/ping 200 again")
    await acquire(pool)
    drained = pool.drain(w)
    assert w.in_flight == 1
    assert not drained.is_set()


# -- cancellation and timeouts never leak a slot -------------------------------------------------------


async def test_cancelled_waiter_leaves_no_waiter_and_no_slot() -> None:
    pool = make_pool()
    w = add(pool, "a")
    task = await waiting(pool)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.queued == 0
    pool.set_state(w, WorkerState.READY, "/ping 200")
    assert w.in_flight == 0
    assert try_acquire(pool) is w


async def test_worker_handed_over_to_a_waiter_cancelled_before_it_ran_is_given_back() -> None:
    pool = make_pool()
    w = add(pool, "a")
    task = await waiting(pool)
    pool.set_state(w, WorkerState.READY, "/ping 200")  # resolves the waiter's future...
    assert w.in_flight == 1
    task.cancel()  # ...and the task is cancelled before it could take the worker
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (w.in_flight, w.served, pool.queued) == (0, 1, 0)
    assert try_acquire(pool) is w


async def test_worker_handed_over_in_the_same_turn_as_the_wait_timeout_is_given_back() -> None:
    pool = make_pool(wait_timeout=0.0)
    w = add(pool, "a")
    task = asyncio.create_task(acquire(pool))
    # The task's first step queues the request and, with a zero timeout, schedules the timeout for the
    # next loop turn. This callback runs right after that step, so the worker is handed over first and the
    # timeout then cancels a task whose future is already resolved.
    asyncio.get_running_loop().call_soon(pool.set_state, w, WorkerState.READY, "/ping 200")
    with pytest.raises(NoWorkerInTime):
        await task
    assert (w.in_flight, w.served, pool.queued) == (0, 1, 0)


async def test_slot_freed_after_a_waiter_gave_up_goes_to_the_next_waiter() -> None:
    pool = make_pool(concurrency=1)
    w = ready_worker(pool, "a")
    held = await acquire(pool)
    gave_up, patient = await waiting(pool), await waiting(pool)
    gave_up.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gave_up
    release(pool, held)
    assert await patient is w
    assert w.in_flight == 1


# -- the slot handle ---------------------------------------------------------------------------------------


async def test_a_slot_is_given_back_once_however_often_it_is_released() -> None:
    pool = make_pool(concurrency=2)
    w = ready_worker(pool, "a")
    slot = pool.try_reserve()
    other = pool.try_reserve()
    assert slot is not None and other is not None and slot.worker is w and w.in_flight == 2
    slot.release()
    slot.release()  # every ending path may release: only the first counts
    assert slot.released and w.in_flight == 1 and w.served == 1
    other.release(failed=True)
    assert w.in_flight == 0 and w.failed == 1


async def test_a_slot_reserved_while_waiting_is_the_worker_that_freed_up() -> None:
    pool = make_pool(concurrency=1)
    w = ready_worker(pool, "a")
    first = await pool.reserve()
    waiter = asyncio.create_task(pool.reserve())
    await settle(lambda: pool.queued == 1, "queued")
    first.release()
    second = await waiter
    assert second.worker is w and w.in_flight == 1
    second.release()
    assert w.in_flight == 0


# -- shutdown ------------------------------------------------------------------------------------------


async def test_close_fails_waiting_requests_with_shutting_down() -> None:
    pool = make_pool()
    tasks = [await waiting(pool), await waiting(pool)]
    pool.close()
    for t in tasks:
        with pytest.raises(ShuttingDown):
            await t
    assert pool.queued == 0


async def test_closed_pool_refuses_new_requests_even_with_a_free_worker() -> None:
    pool = make_pool()
    w = ready_worker(pool, "a")
    pool.close()
    with pytest.raises(ShuttingDown):
        await acquire(pool)
    assert pool.try_reserve() is None
    assert w.in_flight == 0


async def test_closed_pool_gives_no_slot_to_try_acquire() -> None:
    pool = make_pool()
    ready_worker(pool, "a")
    pool.close()
    assert try_acquire(pool) is None


# -- the controller's view -----------------------------------------------------------------------------


async def test_snapshot_reflects_states_queue_and_idle_time() -> None:
    clock = FakeClock(100.0)
    pool = make_pool(concurrency=1, clock=clock)
    w = add(pool, "a")
    clock.now = 103.0
    pool.set_state(w, WorkerState.READY, "/ping 200")
    s = pool.snapshot()
    assert s.now == 103.0
    assert s.workers == (WorkerView("a", WorkerState.READY, 0, 103.0, 103.0),)
    assert (s.queued, s.oldest_queued_at, s.start_blocked_until) == (0, None, 0.0)

    clock.now = 104.0
    held = await acquire(pool)
    clock.now = 105.0
    task = await waiting(pool)
    clock.now = 106.0
    s = pool.snapshot(start_blocked_until=110.0)
    assert s.workers == (WorkerView("a", WorkerState.READY, 1, 103.0, None),)
    assert (s.queued, s.oldest_queued_at, s.start_blocked_until) == (1, 105.0, 110.0)

    clock.now = 107.0
    release(pool, held)
    release(pool, await task)
    s = pool.snapshot()
    assert s.workers == (WorkerView("a", WorkerState.READY, 0, 103.0, 107.0),)
    assert (s.queued, s.oldest_queued_at) == (0, None)


# -- strict affinity -----------------------------------------------------------------------------------


async def strict_waiting(pool: WorkerPool, wid: str) -> asyncio.Task[Worker]:
    before = pool.queued
    task = asyncio.create_task(acquire(pool, wid, strict=True))
    await settle(lambda: pool.queued == before + 1, "strict request queued")
    return task


async def test_strict_request_takes_only_its_worker() -> None:
    pool = make_pool(concurrency=1)
    a, b = ready_worker(pool, "a"), ready_worker(pool, "b")
    assert await acquire(pool, "b", strict=True) is b
    assert try_acquire(pool, "b", strict=True) is None  # b is full; a is free but not b
    assert a.in_flight == 0


async def test_strict_waiter_gets_its_worker_when_a_slot_frees() -> None:
    pool = make_pool(concurrency=1)
    a = ready_worker(pool, "a")
    await acquire(pool, "a", strict=True)
    ready_worker(pool, "b")  # a free worker, not the one asked for
    task = await strict_waiting(pool, "a")
    await settle(lambda: True, "a turn")
    assert not task.done()
    release(pool, a)
    assert await task is a


async def test_strict_waiter_does_not_hold_up_other_requests() -> None:
    pool = make_pool(concurrency=1)
    a = ready_worker(pool, "a")
    await acquire(pool)  # a is busy
    strict = await strict_waiting(pool, "a")
    b = ready_worker(pool, "b")
    # A request for any worker, queued behind the strict one, takes b; a new one does too (try_acquire).
    assert try_acquire(pool) is b
    release(pool, b)
    anyone = asyncio.create_task(acquire(pool))
    assert await anyone is b
    assert not strict.done()
    release(pool, a)
    assert await strict is a


async def test_strict_waiters_do_not_count_as_queue_for_scaling() -> None:
    pool = make_pool(concurrency=1)
    ready_worker(pool, "a")
    await acquire(pool)
    waiter = await strict_waiting(pool, "a")
    snap = pool.snapshot()
    assert (snap.queued, snap.oldest_queued_at, pool.queued) == (0, None, 1)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)


async def test_strict_request_for_an_unknown_or_leaving_worker_fails_with_worker_gone() -> None:
    pool = make_pool(concurrency=1)
    w = ready_worker(pool, "a")
    with pytest.raises(WorkerGone):
        await acquire(pool, "nope", strict=True)
    pool.drain(w)
    with pytest.raises(WorkerGone):
        await acquire(pool, "a", strict=True)


async def test_strict_waiter_fails_at_once_when_its_worker_leaves() -> None:
    pool = make_pool(concurrency=1, wait_timeout=30.0)
    w = ready_worker(pool, "a")
    await acquire(pool)
    task = await strict_waiting(pool, "a")
    pool.set_state(w, WorkerState.STOPPING, "replaced")
    with pytest.raises(WorkerGone):
        await task
    assert pool.queued == 0


async def test_strict_waiter_waits_while_its_worker_is_unhealthy_and_gets_it_back() -> None:
    pool = make_pool(concurrency=1)
    w = ready_worker(pool, "a")
    pool.set_state(w, WorkerState.UNHEALTHY, "/ping did not answer")
    task = await strict_waiting(pool, "a")
    pool.set_state(w, WorkerState.READY, "/ping 200 again")
    assert await task is w


async def test_strict_queue_state_stays_consistent_when_waiters_give_up() -> None:
    pool = make_pool(concurrency=1, wait_timeout=0.05)
    a = ready_worker(pool, "a")
    await acquire(pool)
    with pytest.raises(NoWorkerInTime):
        await acquire(pool, "a", strict=True)
    task = await strict_waiting(pool, "a")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.queued == 0 and pool.snapshot().queued == 0
    release(pool, a)
    assert try_acquire(pool) is a  # no phantom strict waiter blocks or takes the slot


# -- a cold start's queue is shared among the workers started for it ---------------------------------------


async def test_a_cold_start_burst_is_shared_among_the_workers_started_for_it() -> None:
    """Issue 10: with unlimited concurrency, 12 requests queued at a cold start all went to the first of the 3
    starting workers to turn ready ([0, 12, 0]); two paid-for workers served nothing."""
    clock = FakeClock()
    pool = make_pool(concurrency=0, max_queue=100, clock=clock)
    workers = [add(pool, f"w{i}") for i in range(3)]
    tasks = [await waiting(pool) for _ in range(12)]
    clock.now += 1.0
    pool.set_state(workers[1], WorkerState.READY, "/ping 200")
    await settle(lambda: sum(t.done() for t in tasks) == 4, "the first ready worker's share")
    assert (workers[1].in_flight, pool.queued) == (4, 8)
    pool.set_state(workers[0], WorkerState.READY, "/ping 200")
    await settle(lambda: sum(t.done() for t in tasks) == 8, "the second worker's share")
    pool.set_state(workers[2], WorkerState.READY, "/ping 200")
    await settle(lambda: all(t.done() for t in tasks), "every request served")
    assert [w.in_flight for w in workers] == [4, 4, 4]


async def test_a_worker_that_starts_much_slower_than_expected_holds_nobody_back() -> None:
    clock = FakeClock()
    pool = make_pool(concurrency=0, max_queue=100, clock=clock)
    fast, slow = add(pool, "fast"), add(pool, "slow")
    tasks = [await waiting(pool) for _ in range(6)]
    clock.now += 1.0  # a 1 s cold start: the slow one is expected within 2 x 1 s + 1 s of its start
    pool.set_state(fast, WorkerState.READY, "/ping 200")
    await settle(lambda: fast.in_flight == 3, "its share")
    clock.now += 2.5  # 3.5 s after the slow one's start
    pool.redispatch()  # what the pool's timer does at that moment
    await settle(lambda: all(t.done() for t in tasks), "the rest, on the ready worker")
    assert (fast.in_flight, slow.in_flight) == (6, 0)


async def test_a_starting_worker_that_exits_gives_its_share_to_the_ready_ones() -> None:
    clock = FakeClock()
    pool = make_pool(concurrency=0, max_queue=100, clock=clock)
    a, b = add(pool, "a"), add(pool, "b")
    tasks = [await waiting(pool) for _ in range(4)]
    pool.set_state(a, WorkerState.READY, "/ping 200")
    await settle(lambda: a.in_flight == 2, "its share")
    pool.set_state(b, WorkerState.EXITED, "exit code 1")
    await settle(lambda: all(t.done() for t in tasks), "the rest")
    assert a.in_flight == 4


async def test_once_the_burst_is_served_requests_route_as_usual() -> None:
    clock = FakeClock()
    pool = make_pool(concurrency=0, max_queue=100, clock=clock)
    a, _b = add(pool, "a"), add(pool, "b")
    task = await waiting(pool)
    pool.set_state(a, WorkerState.READY, "/ping 200")
    await settle(task.done, "the queued request")
    for _ in range(5):  # b still starting: no queue now, so nothing is held back
        assert try_acquire(pool) is a
    assert a.in_flight == 6


# -- what a client learns when no worker takes its request -----------------------------------------------


async def test_failing_starts_fail_waiting_requests_at_once_with_the_reason() -> None:
    clock = FakeClock()
    pool = make_pool(max_queue=10, clock=clock)
    task = await waiting(pool)
    pool.set_trouble("workers are failing to start (2 in a row): exit code 3", until=clock.now + 4.0, fail_fast=True)
    with pytest.raises(NoWorkerInTime) as caught:
        await task
    assert caught.value.why == "workers are failing to start (2 in a row): exit code 3"
    assert caught.value.retry_after == 4.0
    with pytest.raises(NoWorkerInTime):  # a new request does not wait either
        await acquire(pool)
    pool.set_trouble("workers are failing to start (2 in a row): exit code 3", until=clock.now)
    task = await waiting(pool)  # a new start is being tried: requests wait for it again ...
    pool.wait_timeout = 0.01
    with pytest.raises(NoWorkerInTime) as caught:
        await acquire(pool)
    assert caught.value.why.startswith("workers are failing to start")  # ... and learn why if it does not come
    task.cancel()


async def test_failing_starts_do_not_stop_a_ready_worker_from_serving() -> None:
    pool = make_pool(concurrency=1)
    w = ready_worker(pool, "a")
    pool.set_trouble("workers are failing to start", until=pool.clock() + 10, fail_fast=True)
    assert await acquire(pool) is w
    task = await waiting(pool)  # behind the ready worker's one slot
    release(pool, w)
    assert await task is w


async def test_no_worker_in_time_says_which_workers_are_still_starting_and_when_to_retry() -> None:
    clock = FakeClock()
    pool = make_pool(wait_timeout=0.05, clock=clock)
    first = add(pool, "first")
    clock.now += 10.0
    pool.set_state(first, WorkerState.READY)  # a 10 s cold start
    pool.set_state(first, WorkerState.EXITED)
    slow = add(pool, "slow")
    pool.set_state(slow, WorkerState.STARTING, "/ping 204 (initializing)")
    slow.reason = "/ping 204 (initializing)"
    clock.now += 3.0
    with pytest.raises(NoWorkerInTime) as caught:
        await acquire(pool)
    assert caught.value.why == "1 worker(s) still starting (the first for 3s: /ping 204 (initializing))"
    assert caught.value.retry_after == 7.0  # the expected 10 s start less the 3 s it has been starting


async def test_release_counts_the_failures_since_the_last_answer() -> None:
    pool = make_pool(concurrency=3)
    w = ready_worker(pool, "a")
    for _ in range(3):
        try_acquire(pool)
    release(pool, w, failed=True)
    release(pool, w, failed=True)
    assert w.failed == 2
    release(pool, w)
    assert w.failed == 0
