"""The controller's paths in-process: a fake backend, a fake prober and virtual time, on a real event loop.

The decisions themselves are ``test_policy.py``'s; here, what the controller does with them when the backend
fails or chooses otherwise: drains that cannot be announced, a backend that stops another worker, a new
leader's adoption of drains, crash-loop back-off, failed stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from lbproxy.controller import PEER_POLL, Controller
from lbproxy.metrics import Metrics
from lbproxy.policy import PeerLoad, ScalingSettings, WorkerState
from lbproxy.pool import Worker, WorkerPool

from .fakes import FakeBackend, FakeProber, VirtualClock, run_ready_tasks

IDLE = 5.0


@dataclass
class Rig:
    clock: VirtualClock
    pool: WorkerPool
    prober: FakeProber
    controller: Controller
    backend: FakeBackend
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def lead(self) -> None:
        """This replica leads from now on: the controller runs (and adopts what an earlier leader left)."""
        self.tasks.append(asyncio.create_task(self.controller.run(self.backend)))
        await run_ready_tasks()

    async def lose_lead(self) -> None:
        task = self.tasks.pop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    def state(self, worker_id: str) -> WorkerState | None:
        w = self.pool.get(worker_id)
        return None if w is None else w.state

    def in_rotation(self, worker_id: str) -> bool:
        """Ready, so the pool routes new requests to it."""
        return any(w.id == worker_id for w in self.pool.ready)

    async def serve_one(self) -> Worker:
        """A request arrives with no worker: it queues, a worker starts, turns ready and takes it."""
        request = asyncio.create_task(self.pool.reserve())
        await run_ready_tasks()
        worker_id = self.backend.live[-1]
        self.prober.ping_ok(worker_id)
        slot = await request
        slot.release()
        return slot.worker


@pytest.fixture
async def rig() -> AsyncIterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**settings: float) -> Rig:
        clock = VirtualClock()
        pool = WorkerPool(concurrency=1, max_queue=10, wait_timeout=30.0, clock=clock)
        prober = FakeProber(pool)
        scaling = ScalingSettings(**{"active": 0, "max": 2, "concurrency": 1, "queue_delay": 0.0,
                                     "idle_timeout": IDLE, **settings})
        controller = Controller(scaling, pool, prober, Metrics("test"), clock=clock, sleep=clock.sleep)
        made.append(Rig(clock, pool, prober, controller, FakeBackend(controller)))
        return made[-1]

    yield make
    for r in made:
        for task in r.tasks:
            task.cancel()
        await asyncio.gather(*r.tasks, return_exceptions=True)
        r.pool.close()
        await r.controller.shutdown()
        assert r.backend.closed and r.backend.live == []


# -- drains ------------------------------------------------------------------------------------------------


async def test_an_idle_worker_is_drained_announced_and_stopped(rig):
    r = rig()
    await r.lead()
    w = await r.serve_one()
    await r.clock.advance(IDLE - 0.5)
    assert r.in_rotation(w.id)
    await r.clock.advance(0.5)
    assert r.backend.announced == [(w.id, True)]
    assert r.backend.live == [] and r.state(w.id) is None


async def test_a_drain_whose_announcement_fails_keeps_the_worker_in_rotation(rig):
    r = rig()
    await r.lead()
    w = await r.serve_one()
    r.backend.mark_error = "annotating pod w1: 503 Service Unavailable"
    await r.clock.advance(IDLE)
    # The other replicas could not be told: stopping it now could cut their requests, so it serves on.
    assert r.backend.live == [w.id] and r.backend.announced == []
    assert r.in_rotation(w.id) and w.id in r.prober.probing
    slot = r.pool.try_reserve()
    assert slot is not None and slot.worker is w
    slot.release()


async def test_when_the_backend_stops_another_worker_the_victim_serves_again(rig):
    r = rig()
    await r.lead()
    first = asyncio.create_task(r.pool.reserve())
    await run_ready_tasks()
    r.prober.ping_ok("w1")
    on_w1 = await first
    second = asyncio.create_task(r.pool.reserve())  # w1 is busy: a second worker starts (and stays pending)
    await r.clock.advance(0.5)
    assert r.backend.live == ["w1", "w2"] and r.state("w2") is WorkerState.STARTING
    on_w1.release()
    (await second).release()
    r.backend.instead["w1"] = "w2"  # the ReplicaSet removes the unscheduled pod rather than the chosen one
    await r.clock.advance(IDLE + 1)
    assert r.backend.live == ["w1"] and r.state("w2") is None
    assert r.in_rotation("w1") and "w1" in r.prober.probing
    assert r.backend.announced == [("w1", True), ("w1", False)]  # the other replicas route to it again


async def test_a_drained_worker_is_stopped_only_once_other_replicas_finished_with_it(rig):
    r = rig()
    await r.lead()
    w = await r.serve_one()
    peers: list[PeerLoad] = []
    r.controller.peer_loads = lambda: tuple(peers)

    def busy_elsewhere(worker_id: str, draining: bool) -> None:
        # A request the other replica sent before it saw the drain mark.
        if draining:
            peers[:] = [PeerLoad(0, 0.0, ((worker_id, 1, 0.0),))]

    r.backend.on_announce = busy_elsewhere
    await r.clock.advance(IDLE + 10)
    assert r.backend.announced == [(w.id, True)]
    assert r.backend.live == [w.id] and r.state(w.id) is WorkerState.DRAINING
    peers.clear()
    await r.clock.advance(2 * PEER_POLL)
    assert r.backend.live == []


async def test_a_new_leader_adopts_the_drains_of_an_earlier_leader(rig):
    r = rig()
    r.backend.appear("w1")
    r.prober.ping_ok("w1")
    r.controller.worker_draining("w1", True)  # the earlier leader's mark, as the pod watch reports it
    assert r.state("w1") is WorkerState.DRAINING and not r.in_rotation("w1")
    await r.lead()
    assert r.in_rotation("w1") and "w1" in r.prober.probing
    assert r.backend.announced == [("w1", False)] and r.backend.live == ["w1"]


async def test_a_replica_that_lost_the_lead_leaves_its_drain_to_the_next_leader(rig):
    r = rig()
    await r.lead()
    w = await r.serve_one()
    r.controller.peer_loads = lambda: ()
    r.backend.on_announce = lambda worker_id, draining: setattr(
        r.controller, "peer_loads", lambda: (PeerLoad(0, 0.0, ((worker_id, 1, 0.0),)),))
    await r.clock.advance(IDLE)
    assert r.state(w.id) is WorkerState.DRAINING
    await r.lose_lead()
    assert r.backend.live == [w.id] and r.state(w.id) is WorkerState.DRAINING
    await r.lead()  # leading again, it decides anew: the drain it started before is adopted like any other
    assert r.in_rotation(w.id) and r.backend.announced[-1] == (w.id, False)


# -- crash-loop back-off --------------------------------------------------------------------------------------


async def crash_until_next_start(r: Rig, backoff: float) -> None:
    """Crash the newest worker before it was ready; the next start comes ``backoff`` seconds later, not before."""
    starts = r.backend.starts
    r.backend.crash(r.backend.live[-1])
    await r.clock.advance(backoff - 0.5)
    assert r.backend.starts == starts, f"started again before {backoff}s"
    await r.clock.advance(0.5)
    assert r.backend.starts == starts + 1, f"not started again after {backoff}s"


async def test_a_crash_looping_worker_is_started_again_after_1_2_4_seconds_up_to_60(rig):
    r = rig(active=1, max=1)
    await r.lead()
    assert r.backend.starts == 1
    for backoff in (1, 2, 4, 8, 16, 32, 60, 60):
        await crash_until_next_start(r, backoff)
    assert r.controller.failed_starts == 8
    assert "exited before it was ready (exit code 3)" in r.controller.last_failure


async def test_a_worker_that_turned_ready_resets_the_back_off(rig):
    r = rig(active=1, max=1)
    await r.lead()
    for backoff in (1, 2, 4):
        await crash_until_next_start(r, backoff)
    r.prober.ping_ok(r.backend.live[-1])
    assert r.controller.failed_starts == 0
    r.backend.crash(r.backend.live[-1])  # after it was ready: no back-off for the replacement
    await r.clock.advance(0)
    assert r.backend.starts == 5
    await crash_until_next_start(r, 1)


async def test_a_refused_start_backs_off_too(rig):
    r = rig(active=1, max=1)
    r.backend.start_error = "scaling test to 1: 403 Forbidden"
    await r.lead()
    assert r.controller.failed_starts == 1 and "403 Forbidden" in r.controller.last_failure
    r.backend.start_error = None
    await r.clock.advance(0.5)
    assert r.backend.starts == 0
    await r.clock.advance(0.5)
    assert r.backend.live == ["w1"]


# -- failed stops ------------------------------------------------------------------------------------------


async def test_a_failed_stop_keeps_the_drained_worker_and_the_next_drain_stops_it(rig):
    r = rig()
    await r.lead()
    w = await r.serve_one()
    r.backend.stop_error = "scaling test to 0: connection refused"
    await r.clock.advance(IDLE)
    assert r.backend.live == [w.id] and r.in_rotation(w.id) and w.id in r.prober.probing
    assert r.backend.announced[-2:] == [(w.id, True), (w.id, False)]  # other replicas route to it again too
    r.backend.stop_error = None
    await r.clock.advance(IDLE)  # idle for another timeouts.idle since it was kept
    assert r.backend.live == []


async def test_a_worker_not_ready_in_time_whose_stop_fails_is_not_routed_to(rig):
    r = rig(active=1, max=1, init_timeout=30.0)
    await r.lead()
    r.backend.stop_error = "scaling test to 0: connection refused"
    await r.clock.advance(30)
    # Never ready, and the stop failed: it is replaced once the API answers, and no request goes to it meanwhile.
    assert r.backend.live == ["w1"] and r.state("w1") is WorkerState.UNHEALTHY and not r.in_rotation("w1")
    r.backend.stop_error = None
    await r.clock.advance(r.controller.settings.unhealthy_grace)
    assert "w1" not in r.backend.live
    assert r.controller.failed_starts == 1  # one worker, one failed start: not again when replaced as unhealthy
