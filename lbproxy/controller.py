"""The controller loop: snapshot the pool, ask the policy, make the backend carry it out.

It also receives the backend's worker events, so it is the one place that knows a worker's whole life:
added (probed by the health prober), ready, drained, stopped, exited, and crash-loop back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from .backends.base import Backend, StartFailed, WorkerAddress
from .control_timing import TICK, fails_fast, next_decision_in, start_backoff
from .health import HealthProber
from .metrics import Metrics
from .policy import Decision, PeerLoad, ScalingSettings, Snapshot, WorkerState, decide, merge_peer_load
from .pool import Worker, WorkerPool

log = logging.getLogger("lbproxy.controller")

PEER_POLL = 0.1  # how often a drained worker's in-flight count on the other replicas is looked at again


class Prober(Protocol):
    """What decides a worker is ready: ``HealthProber`` (/ping), or a queue's first contact with a worker."""

    def watch(self, w: Worker) -> None: ...

    def forget(self, worker_id: str) -> None: ...


# (blocked until, pending starts) -> the load to decide on; queue endpoints count jobs, not pool waiters.
SnapshotSource = Callable[[float, int], Awaitable[Snapshot]]


class Controller:
    """Scales the workers between ``workers.active`` and ``workers.max``."""

    def __init__(
        self,
        settings: ScalingSettings,
        pool: WorkerPool,
        prober: HealthProber | Prober,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        snapshot: SnapshotSource | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.prober = prober
        self.metrics = metrics
        self.clock = clock  # the pool's clock too: the policy compares the two
        self.sleep = sleep  # tests pass a virtual one, with the clock
        self.snapshot = snapshot
        self.backend: Backend | None = None
        self.decisions: deque[dict[str, Any]] = deque(maxlen=20)
        self.failed_starts = 0
        self.blocked_until = 0.0
        self.last_failure = ""
        self._tasks: set[asyncio.Task[None]] = set()
        self._failed_workers: set[str] = set()  # workers counted as failed starts (each once)
        self._draining: set[str] = set()  # drains this controller started (others come from the leader)
        self.peer_loads: Callable[[], tuple[PeerLoad, ...]] = tuple
        self.leading = False
        self.start_failures: deque[dict[str, Any]] = deque(maxlen=20)
        # cost.max_per_hour: (starts wanted, starts accepted but not reported) -> (starts allowed, why not all)
        self.limit_starts: Callable[[int, int], tuple[int, str | None]] = lambda wanted, pending: (wanted, None)
        self.capped_reason: str | None = None  # why scaling is held back by the spend limit now, if it is
        pool.on_state_change(self._state_changed)

    # -- worker events from the backend ------------------------------------------------------------

    def worker_added(self, address: WorkerAddress) -> None:
        w = self.pool.add(address.id, address.host, address.port, address.health_port, address.rank)
        self.prober.watch(w)

    def worker_address(self, worker_id: str, host: str) -> None:
        w = self.pool.get(worker_id)
        if w is not None:
            self.pool.set_address(w, host)  # the prober starts probing once it sees an address

    def worker_draining(self, worker_id: str, draining: bool) -> None:
        """The leader marked (or unmarked) a worker for scale-down: every replica stops routing to it."""
        w = self.pool.get(worker_id)
        if w is None or worker_id in self._draining:
            return
        if draining and w.state in (WorkerState.READY, WorkerState.UNHEALTHY, WorkerState.STARTING):
            log.info("worker %s is being drained by the leader: no new requests", worker_id)
            self.pool.drain(w)
        elif not draining and w.state is WorkerState.DRAINING:
            self.pool.set_state(w, WorkerState.READY, "drain cancelled", force=True)
            self.prober.watch(w)

    def worker_terminating(self, worker_id: str, reason: str) -> None:
        w = self.pool.get(worker_id)
        if w is not None and w.state is not WorkerState.STOPPING:
            log.info("worker %s is being stopped outside lbproxy (%s): no new requests", worker_id, reason)
            self.prober.forget(worker_id)
            self.pool.set_state(w, WorkerState.STOPPING, reason)

    def worker_exited(self, worker_id: str, reason: str) -> None:
        w = self.pool.get(worker_id)
        if w is None:
            return
        expected = w.state is WorkerState.STOPPING
        self.prober.forget(worker_id)
        if not expected:
            self.metrics.worker_exits.labels(self.metrics.endpoint).inc()
            if w.ready_at is None:
                self._start_failed(f"worker {worker_id} exited before it was ready ({reason})", worker_id)
            else:
                # Its requests usually fail (connection reset) before the exit is reported: count those too.
                log.warning("worker %s exited unexpectedly (%s) with %d request(s) in flight",
                            worker_id, reason, w.in_flight + w.failed)
        self.pool.set_state(w, WorkerState.EXITED, reason)
        self._failed_workers.discard(worker_id)

    def _state_changed(self, w: Worker, old: WorkerState) -> None:
        if w.state is WorkerState.READY and old is WorkerState.STARTING:
            cold = self.clock() - w.started_at
            self.metrics.cold_start.labels(self.metrics.endpoint).observe(cold)
            log.info("worker %s ready after %.2fs", w.id, cold)
            self.failed_starts = 0

    def _tell_pool(self) -> None:
        """What clients waiting for a worker are told: why starts fail, and (after FAIL_FAST_AFTER in a row,
        during the back-off) that none will come soon, so they get their 503 now; or that the spend limit holds
        scaling back (they keep waiting: a worker may free up)."""
        if not self.failed_starts:
            if self.capped_reason is not None:
                self.pool.set_trouble(f"scaling is capped: {self.capped_reason}", self.clock() + TICK)
            else:
                self.pool.set_trouble(None)
            return
        why = f"workers are failing to start ({self.failed_starts} in a row): {self.last_failure}"
        self.pool.set_trouble(why, self.blocked_until,
                              fail_fast=fails_fast(self.failed_starts, self.clock(), self.blocked_until))

    def _start_failed(self, why: str, worker_id: str | None = None) -> None:
        """One more failed start; a worker counts once, however many ways it fails (never ready, then its stop
        fails, then it is replaced as unhealthy or exits)."""
        if worker_id is not None:
            if worker_id in self._failed_workers:
                return
            self._failed_workers.add(worker_id)
        self.failed_starts += 1
        delay = start_backoff(self.failed_starts)
        self.blocked_until = self.clock() + delay
        self.last_failure = why
        self.start_failures.append({"at": time.time(), "reason": why})
        log.error("%s; %d failed start(s) in a row, next start in %.0fs", why, self.failed_starts, delay)

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self, backend: Backend) -> None:
        """Decide and act until cancelled. An exception here is a bug: it ends the process."""
        self.backend = backend
        self.leading = True
        changed = self.pool.changed
        try:
            await self._adopt_drains(backend)
            while True:
                changed.clear()
                if self.snapshot is None:
                    snap = self.pool.snapshot(self.blocked_until, backend.pending_starts)
                else:
                    snap = await self.snapshot(self.blocked_until, backend.pending_starts)
                decision = decide(merge_peer_load(snap, self.peer_loads()), self.settings)
                decision = self._within_spend_limit(decision, backend.pending_starts)
                if decision.changes_anything:
                    await self._apply(decision)
                self._tell_pool()
                await self._changed_or_slept(changed, next_decision_in(decision.recheck_after))
        finally:
            self.leading = False
            for task in list(self._tasks):  # drains of a lost leadership: the next leader decides anew
                task.cancel()

    async def _changed_or_slept(self, changed: asyncio.Event, seconds: float) -> None:
        """Return once the pool changed, or after ``seconds`` of ``self.sleep``.

        Not wait_for: on 3.11 it drops a cancellation (shutdown) that comes in the same loop turn as the event,
        and the controller would then never stop. asyncio.wait lets every cancellation through.
        """
        woken = asyncio.ensure_future(changed.wait())
        timer = asyncio.ensure_future(self.sleep(seconds))
        try:
            await asyncio.wait((woken, timer), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
            timer.cancel()
            await asyncio.gather(woken, timer, return_exceptions=True)  # leave no task behind

    def _within_spend_limit(self, d: Decision, pending_starts: int) -> Decision:
        """Start only the workers cost.max_per_hour allows; the requests that wanted the others queue."""
        allowed, why = self.limit_starts(d.start, pending_starts) if d.start else (0, None)
        if why != self.capped_reason:
            if why is not None:
                log.warning("scaling capped: %s", why)
                self.decisions.append({"at": time.time(), "desired": d.desired, "start": allowed, "drain": [],
                                       "stop": [], "reason": why})
            else:
                log.info("scaling no longer capped by cost.max_per_hour")
            self.capped_reason = why
        return d if allowed == d.start else dataclasses.replace(d, start=allowed)

    async def _adopt_drains(self, backend: Backend) -> None:
        """A new leader returns to rotation the workers an earlier leader was draining."""
        for w in list(self.pool.workers.values()):
            if w.state is WorkerState.DRAINING and w.id not in self._draining:
                with contextlib.suppress(StartFailed):
                    await backend.mark_draining(w.id, False)
                self.pool.set_state(w, WorkerState.READY, "drain of an earlier leader cancelled", force=True)
                self.prober.watch(w)

    async def _apply(self, d: Decision) -> None:
        self.decisions.append({
            "at": time.time(), "desired": d.desired, "start": d.start, "drain": list(d.drain),
            "stop": [wid for wid, _ in d.stop], "reason": d.reason,
        })
        for wid, why in d.stop:
            w = self.pool.get(wid)
            if w is not None:
                if w.ready_at is None:  # never ready (timeouts.init): a failed start, backed off like a crash
                    last = f" (last: {w.reason})" if w.reason else ""
                    self._start_failed(f"worker {wid} {why}{last}", wid)
                log.warning("replacing worker %s: %s", wid, why)
                self.metrics.scaled("down", "replace")
                self.pool.set_state(w, WorkerState.STOPPING, why)
                self._spawn(self._stop(wid, kept_as=WorkerState.UNHEALTHY))
        for wid in d.drain:
            w = self.pool.get(wid)
            if w is not None:
                log.info("scale down: draining worker %s (%s)", wid, d.reason)
                self.metrics.scaled("down", "idle")
                # Out of rotation now, in the same step as the decision: no request can reach it after this.
                drained = self.pool.drain(w)
                self._spawn(self._stop_when_drained(w, drained))
        if d.start:
            log.info("scale up: starting %d worker(s), %d wanted (%s)", d.start, d.desired, d.reason)
            self.metrics.scaled("up", "load", d.start)
            # Started inline: the next decision must see these workers, or a burst would overshoot.
            for _ in range(d.start):
                await self._start_one()

    async def _start_one(self) -> None:
        assert self.backend is not None
        try:
            await self.backend.start_worker()
        except StartFailed as exc:
            self._start_failed(f"could not start a worker: {exc}")

    async def _stop_when_drained(self, w: Worker, drained: asyncio.Event) -> None:
        assert self.backend is not None
        self._draining.add(w.id)
        try:
            try:
                await self.backend.mark_draining(w.id, True)  # other replicas stop routing to it too
            except StartFailed as exc:
                log.error("could not mark worker %s as draining: %s; keeping it", w.id, exc)
                self.pool.set_state(w, WorkerState.READY, "drain not announced", force=True)
                self.prober.watch(w)
                return
            await drained.wait()  # never stop a worker that still serves a request ...
            while self.peer_in_flight(w.id):  # on any replica; their counts arrive by polling
                await self.sleep(PEER_POLL)
            self.pool.set_state(w, WorkerState.STOPPING, "drained")
            if not await self._stop(w.id):
                if w.state is WorkerState.STOPPING:
                    # Another worker went instead (the ReplicaSet chose): this one is idle and healthy: it serves.
                    self.pool.set_state(w, WorkerState.READY, "kept: another worker was stopped instead", force=True)
                    self.prober.watch(w)
                # Kept (either way): the other replicas route to it again too, or it would serve this one only.
                try:
                    await self.backend.mark_draining(w.id, False)
                except StartFailed as exc:
                    log.warning("could not take back the drain mark of worker %s: %s", w.id, exc)
        finally:
            self._draining.discard(w.id)

    def peer_in_flight(self, worker_id: str) -> int:
        return sum(n for load in self.peer_loads() for wid, n, _ in load.workers if wid == worker_id)

    async def _stop(self, worker_id: str, kept_as: WorkerState = WorkerState.READY) -> bool:
        """Stop the worker; when the backend cannot, it is kept ``kept_as``: a drained worker serves again, one
        being replaced (never ready, or unhealthy) gets no requests and is replaced after the unhealthy grace."""
        assert self.backend is not None
        self.prober.forget(worker_id)
        try:
            return await self.backend.stop_worker(worker_id)
        except StartFailed as exc:  # the backend could not act (API down): the next decision tries again
            log.error("could not stop worker %s: %s", worker_id, exc)
            w = self.pool.get(worker_id)
            if w is not None and w.state is WorkerState.STOPPING:
                self.pool.set_state(w, kept_as, "stop failed; kept", force=True)
                self.prober.watch(w)
            return False

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def shutdown(self) -> None:
        """Stop every worker (after the proxy finished its in-flight requests)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in list(self.pool.workers.values()):
            self.prober.forget(w.id)
            self.pool.set_state(w, WorkerState.STOPPING, "shutdown")
        if self.backend is not None:
            await self.backend.close()
