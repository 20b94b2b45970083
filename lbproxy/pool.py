"""The worker pool: who is ready, how busy each worker is, and the FIFO queue of requests waiting for one.

All state lives on the event loop thread and changes without awaiting in between, so the controller's
snapshot, the drain of a victim and the dispatch of queued requests cannot interleave mid-change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .policy import Snapshot, WorkerState, WorkerView
from .routing import COLD_STARTS_KEPT, burst_share, choose_worker

log = logging.getLogger("lbproxy.pool")


class QueueFull(Exception):
    """More requests wait than ``limits.max_queue`` allows."""


class NoWorkerInTime(Exception):
    """No worker took the request within ``timeouts.wait``, or none can (workers are failing to start).

    ``why`` says what is known ("" when nothing more than the wait), ``retry_after`` when a client could expect
    a worker (seconds; None: unknown)."""

    def __init__(self, why: str = "", retry_after: float | None = None) -> None:
        super().__init__(why)
        self.why = why
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The endpoint is stopping and takes no new requests."""


class WorkerGone(Exception):
    """Strict affinity: the requested worker is gone, or leaving (draining or stopping)."""


_LEAVING = (WorkerState.DRAINING, WorkerState.STOPPING, WorkerState.EXITED)


@dataclass(eq=False, slots=True)
class Worker:
    """One worker as the proxy sees it. Mutated only by the pool."""

    id: str
    host: str
    port: int
    health_port: int
    state: WorkerState = WorkerState.STARTING
    since: float = 0.0
    started_at: float = 0.0
    ready_at: float | None = None
    in_flight: int = 0
    idle_since: float | None = None
    served: int = 0
    failed: int = 0  # requests that failed on it since the last one it answered (the exit log names them)
    rank: int = 0
    reason: str = ""
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"

    def idle_for(self, now: float) -> float:
        return 0.0 if self.idle_since is None or self.in_flight else now - self.idle_since


class Slot:
    """One reserved request slot on a worker: ``release()`` gives it back, once, whatever the path (knative's
    throttler release handle). ``failed``: the worker failed the request (its exit log counts those)."""

    __slots__ = ("_pool", "worker")

    def __init__(self, pool: WorkerPool, worker: Worker) -> None:
        self._pool: WorkerPool | None = pool
        self.worker = worker

    def release(self, failed: bool = False) -> None:
        pool = self._pool
        if pool is not None:
            self._pool = None
            pool._release(self.worker, failed)

    @property
    def released(self) -> bool:
        return self._pool is None


@dataclass(eq=False, slots=True)
class _Waiter:
    future: asyncio.Future[Worker]
    since: float
    preferred: str | None
    strict: bool = False  # only ``preferred`` may take it


Listener = Callable[[Worker, WorkerState], None]


class WorkerPool:
    """Routes requests to ready workers and queues them (FIFO) when none has a free slot."""

    def __init__(
        self,
        concurrency: int,
        max_queue: int,
        wait_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.concurrency = concurrency
        self.max_queue = max_queue
        self.wait_timeout = wait_timeout
        self.clock = clock
        self.workers: dict[str, Worker] = {}
        self._ready: tuple[Worker, ...] = ()  # replaced whole on every state change
        self._waiters: deque[_Waiter] = deque()
        self._strict_waiting = 0  # waiters with strict affinity: they never hold up the others
        self._listeners: list[Listener] = []
        self._on_queued: list[Callable[[], None]] = []
        self._on_busy: list[Callable[[Worker], None]] = []
        self._closed = False
        # A cold start: requests queued while no worker was ready. Until the queue is empty again, the workers
        # started for it share it (``_share``) instead of the first one ready taking everything.
        self._burst = False
        self._redispatch: asyncio.TimerHandle | None = None
        self._cold_starts: deque[float] = deque(maxlen=COLD_STARTS_KEPT)
        self._trouble: tuple[str, float] | None = None  # (why, until): workers fail to start; see set_trouble
        self._fail_fast = False
        self.changed = asyncio.Event()  # set on every state change; the controller clears it

    # -- observers -------------------------------------------------------------------------------

    def on_state_change(self, listener: Listener) -> None:
        """Call ``listener(worker, old_state)`` after every state change."""
        self._listeners.append(listener)

    def on_busy_change(self, listener: Callable[[Worker], None]) -> None:
        """Call ``listener(worker)`` when its in-flight count goes from 0 to 1 or back to 0 (cost phases)."""
        self._on_busy.append(listener)

    def _busy_changed(self, w: Worker) -> None:
        for listener in self._on_busy:
            listener(w)

    def on_queued_without_worker(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when a request queues while no worker is ready (cold start)."""
        self._on_queued.append(callback)

    # -- membership and state ----------------------------------------------------------------------

    def add(self, worker_id: str, host: str, port: int, health_port: int, rank: int = 0) -> Worker:
        now = self.clock()
        w = Worker(worker_id, host, port, health_port, since=now, started_at=now, rank=rank)
        self.workers[worker_id] = w
        self._notify(w, WorkerState.EXITED)
        return w

    def set_state(self, w: Worker, state: WorkerState, reason: str = "", *, force: bool = False) -> None:
        old = w.state
        if old is state or old is WorkerState.EXITED:
            return
        if state is WorkerState.READY and old in (WorkerState.DRAINING, WorkerState.STOPPING) and not force:
            return  # a late /ping 200 does not bring a worker back from scale-down
        now = self.clock()
        w.state, w.since, w.reason = state, now, reason
        if state is WorkerState.READY:
            if w.ready_at is None:
                w.ready_at = now
                self._cold_starts.append(now - w.started_at)
            if w.in_flight == 0:
                w.idle_since = now
            w.drained.clear()  # set again only by a drain that really waits out this worker's requests
        if state in _LEAVING:
            if w.in_flight == 0:
                w.drained.set()
            if self._strict_waiting:
                self._fail_strict_waiters(w.id)
        if state is WorkerState.EXITED:
            del self.workers[w.id]
        if state is WorkerState.READY or old is WorkerState.READY:
            self._ready = tuple(x for x in self.workers.values() if x.state is WorkerState.READY)
        self._notify(w, old)
        if self._waiters and (state is WorkerState.READY or old is WorkerState.STARTING):
            self._dispatch()  # a ready worker takes waiters; one that stopped starting changes the shares

    def set_address(self, w: Worker, host: str) -> None:
        """A worker added without an address has one now (its pod got an IP): the prober starts on it."""
        w.host = host

    def note(self, w: Worker, reason: str) -> None:
        """Why the worker is in its state now (a starting worker's last /ping answer), for /status."""
        w.reason = reason

    def drain(self, w: Worker) -> asyncio.Event:
        """Stop routing to ``w``; the returned event is set once its last in-flight request ended."""
        self.set_state(w, WorkerState.DRAINING, "idle")
        return w.drained

    def _notify(self, w: Worker, old: WorkerState) -> None:
        self.changed.set()
        for listener in self._listeners:
            listener(w, old)

    @property
    def ready(self) -> tuple[Worker, ...]:
        return self._ready

    def get(self, worker_id: str) -> Worker | None:
        return self.workers.get(worker_id)

    # -- requests --------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._waiters)

    @property
    def in_flight(self) -> int:
        return sum(w.in_flight for w in self.workers.values())

    def oldest_queued_at(self) -> float | None:
        """When the oldest request that any worker could take began to wait (strict ones wait for theirs)."""
        for waiter in self._waiters:
            if not waiter.strict:
                return waiter.since
        return None

    # -- what a client is told when no worker takes its request -----------------------------------

    def expected_cold_start(self) -> float | None:
        """The longest of the recent cold starts (seconds from start to ready), None before the first."""
        return max(self._cold_starts) if self._cold_starts else None

    def set_trouble(self, why: str | None, until: float = 0.0, *, fail_fast: bool = False) -> None:
        """The controller says workers are failing to start (``why``; None: they are not), tried again at ``until``.

        A request no worker took is told ``why``. With ``fail_fast``, requests that no ready worker can take fail
        at once with it instead of waiting out ``timeouts.wait`` for a worker that will not come.
        """
        self._trouble = None if why is None else (why, until)
        self._fail_fast = fail_fast and why is not None
        if self._fail_fast and not self._ready:
            error = self.no_worker()
            for waiter in self._waiters:
                if not waiter.strict and not waiter.future.done():
                    waiter.future.set_exception(error)

    def no_worker(self) -> NoWorkerInTime:
        """Why no worker took a request, as far as the pool knows, and when to try again."""
        now = self.clock()
        if self._trouble is not None:
            why, until = self._trouble
            return NoWorkerInTime(why, max(1.0, until - now))
        starting = [w for w in self.workers.values() if w.state is WorkerState.STARTING]
        if starting:
            oldest = min(starting, key=lambda w: w.started_at)
            age = now - oldest.started_at
            detail = f": {oldest.reason}" if oldest.reason else ""
            expected = self.expected_cold_start()
            retry = max(1.0, expected - age) if expected is not None else None
            return NoWorkerInTime(f"{len(starting)} worker(s) still starting (the first for {age:.0f}s{detail})",
                                  retry)
        if self._ready:
            return NoWorkerInTime(f"all {len(self._ready)} ready worker(s) were busy")
        return NoWorkerInTime()

    def try_reserve(self, preferred: str | None = None, strict: bool = False) -> Slot | None:
        """A slot on a ready worker at once, or None (the caller then waits with ``reserve``)."""
        w = self._take(preferred, strict)
        return None if w is None else Slot(self, w)

    async def reserve(self, preferred: str | None = None, strict: bool = False) -> Slot:
        """A slot on a ready worker, waiting in FIFO order for at most ``wait_timeout``.

        ``strict``: wait for the worker ``preferred`` names; WorkerGone when it is not there or leaving.
        Raises QueueFull, NoWorkerInTime (with what is known), ShuttingDown.
        """
        return Slot(self, await self._wait(preferred, strict))

    def _take(self, preferred: str | None = None, strict: bool = False) -> Worker | None:
        """Take a slot on a ready worker at once, or None (the caller then waits with ``_wait``).

        ``strict``: only the worker ``preferred`` names. Waiting strict requests are not overtaken: a slot
        of theirs that frees up is handed to them at once, so it is never free while they wait.
        """
        if self._closed:
            return None  # _wait() refuses
        if strict:
            w = self._free(preferred)
            if w is None:
                return None
        elif len(self._waiters) > self._strict_waiting:
            return None  # FIFO: never overtake requests already waiting
        else:
            w = choose_worker(self._ready, self.concurrency, preferred)
            if w is None:
                return None
        w.in_flight += 1
        w.idle_since = None
        if w.in_flight == 1 and self._on_busy:
            self._busy_changed(w)
        return w

    async def _wait(self, preferred: str | None, strict: bool) -> Worker:
        if self._closed:
            raise ShuttingDown
        if strict:
            target = self.workers.get(preferred or "")
            if target is None or target.state in _LEAVING:
                raise WorkerGone
        w = self._take(preferred, strict)
        if w is not None:
            return w
        if self._fail_fast and not self._ready and not strict:
            raise self.no_worker()
        if len(self._waiters) >= self.max_queue:
            raise QueueFull
        fut: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(fut, self.clock(), preferred, strict)
        self._waiters.append(waiter)
        self._strict_waiting += strict
        self.changed.set()
        if not self._ready and not strict:
            self._burst = True
            for cb in self._on_queued:
                cb()
        self._dispatch()
        try:
            async with asyncio.timeout(self.wait_timeout):
                return await fut
        except BaseException as exc:
            # A worker may have been handed over in the same loop iteration as the timeout or the
            # cancellation: give its slot back, or it would stay reserved forever.
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(fut.result(), False)
            if isinstance(exc, TimeoutError):
                raise self.no_worker() from None
            raise
        finally:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass
            else:
                self._strict_waiting -= strict
            if not self._waiters:
                self._burst = False

    def _release(self, w: Worker, failed: bool) -> None:
        """Give back a slot (``Slot.release``); the next waiter may take it. ``failed``: the worker failed the
        request (counted until it answers one again)."""
        w.in_flight -= 1
        w.served += 1
        w.failed = w.failed + 1 if failed else 0
        if w.in_flight == 0:
            w.idle_since = self.clock()
            if w.state is not WorkerState.READY:
                w.drained.set()
            if self._on_busy:
                self._busy_changed(w)
        if self._waiters:
            self._dispatch()

    def set_in_flight(self, w: Worker, n: int) -> None:
        """Queue endpoints: ``w`` holds ``n`` jobs it pulled itself (no slot was acquired through the pool), so
        that scale-down sees it busy and a drain waits for its jobs."""
        if n == w.in_flight:
            return
        was_busy = bool(w.in_flight)
        w.in_flight = n
        if bool(n) != was_busy and self._on_busy:
            self._busy_changed(w)  # billed busy while it holds a job
        if n:
            w.idle_since = None
            return
        w.idle_since = self.clock()
        if w.state is not WorkerState.READY:
            w.drained.set()

    def redispatch(self) -> None:
        """Dispatch again: a starting worker expected by a cold start may no longer be (see ``_share``)."""
        self._redispatch = None
        if self._waiters:
            self._dispatch()

    def _share(self) -> int:
        """Slots per ready worker for this dispatch: ``concurrency``, or during a cold start less while other
        workers started for the queue are still starting (``routing.burst_share``); a timer dispatches again
        when a worker that was expected soon no longer is."""
        limit = self.concurrency
        if not self._burst or not self._ready:
            return limit
        now = self.clock()
        starting = [w.started_at for w in self.workers.values() if w.state is WorkerState.STARTING]
        demand = sum(w.in_flight for w in self._ready) + len(self._waiters) - self._strict_waiting
        share, again = burst_share(limit, len(self._ready), demand, starting, now, self.expected_cold_start())
        if again is not None and self._redispatch is None:
            self._redispatch = asyncio.get_running_loop().call_later(max(0.01, again - now), self.redispatch)
        return share

    def _dispatch(self) -> None:
        """Hand free slots to waiters, oldest first."""
        if self._strict_waiting:
            return self._dispatch_mixed()
        waiters = self._waiters
        limit = self._share()
        while waiters:
            waiter = waiters[0]
            if waiter.future.done():  # timed out or cancelled; its own finally removes it
                waiters.popleft()
                continue
            w = choose_worker(self._ready, limit, waiter.preferred)
            if w is None:
                return
            waiters.popleft()
            self._hand(waiter, w)
        self._burst = False

    def _dispatch_mixed(self) -> None:
        """``_dispatch`` with strict waiters queued: one pass in order, each waiter served if it can be; a
        strict waiter whose worker is busy does not hold up the others."""
        kept: deque[_Waiter] = deque()
        anyone = True  # a non-strict waiter may still find a worker
        limit = self._share()
        for waiter in self._waiters:
            if waiter.future.done():
                self._strict_waiting -= waiter.strict
                continue
            if waiter.strict:
                w = self._free(waiter.preferred)
            else:
                w = choose_worker(self._ready, limit, waiter.preferred) if anyone else None
                anyone = w is not None
            if w is None:
                kept.append(waiter)
            else:
                self._strict_waiting -= waiter.strict
                self._hand(waiter, w)
        self._waiters = kept

    def _free(self, worker_id: str | None) -> Worker | None:
        """The named worker if it is ready with a free slot (strict affinity), else None."""
        w = self.workers.get(worker_id or "")
        if w is None or w.state is not WorkerState.READY or (self.concurrency and w.in_flight >= self.concurrency):
            return None
        return w

    def _hand(self, waiter: _Waiter, w: Worker) -> None:
        w.in_flight += 1
        w.idle_since = None
        if w.in_flight == 1 and self._on_busy:
            self._busy_changed(w)
        waiter.future.set_result(w)

    def _fail_strict_waiters(self, worker_id: str) -> None:
        """The worker strict waiters wait for is leaving: they fail now instead of at ``timeouts.wait``."""
        for waiter in self._waiters:
            if waiter.strict and waiter.preferred == worker_id and not waiter.future.done():
                waiter.future.set_exception(WorkerGone())

    def close(self) -> None:
        """Refuse new requests and fail every queued one (shutdown)."""
        self._closed = True
        if self._redispatch is not None:
            self._redispatch.cancel()
            self._redispatch = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.future.done():
                waiter.future.set_exception(ShuttingDown())

    # -- the controller's view -------------------------------------------------------------------

    def snapshot(self, start_blocked_until: float = 0.0, pending_starts: int = 0) -> Snapshot:
        return Snapshot(
            now=self.clock(),
            workers=tuple(
                WorkerView(w.id, w.state, w.in_flight, w.since, None if w.in_flight else w.idle_since, w.rank)
                for w in self.workers.values()
            ),
            queued=len(self._waiters) - self._strict_waiting,  # more workers would not serve strict waiters
            oldest_queued_at=self.oldest_queued_at(),
            start_blocked_until=start_blocked_until,
            pending_starts=pending_starts,
        )
