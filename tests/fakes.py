"""In-memory stand-ins for the controller's edges: a backend, the health prober, and virtual time.

They let the controller's paths run in-process on a real event loop, without processes or sockets. Each one
behaves as the real part does at its interface: the backend reports workers through the same ``WorkerEvents``
calls, the prober turns a worker ready the way a ``/ping`` 200 does, and time passes only when a test says so.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable

from lbproxy.backends.base import StartFailed, WorkerAddress, WorkerEvents
from lbproxy.policy import WorkerState
from lbproxy.pool import Worker, WorkerPool

TURNS = 100  # loop turns after each step of virtual time: far more than any chain of awaits here needs


async def run_ready_tasks() -> None:
    """Let every task that can run, run (the loop turns TURNS times; no real time passes)."""
    for _ in range(TURNS):
        await asyncio.sleep(0)


class VirtualClock:
    """``clock()`` and ``sleep()`` for the controller and the pool; ``advance()`` moves time and wakes sleepers."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    @property
    def sleeping(self) -> int:
        """How many sleeps are under way (tasks waiting for virtual time to pass)."""
        return sum(1 for _, _, future in self._sleepers if not future.done())

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, waking each sleeper at its own deadline, in order, as real time would."""
        target = self.now + seconds
        await run_ready_tasks()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, deadline)
            if not future.done():  # a cancelled sleep stays in the heap until its deadline
                future.set_result(None)
                await run_ready_tasks()
        self.now = target
        await run_ready_tasks()


class FakeProber:
    """The health prober's interface to the controller; the test answers ``/ping`` with ``ping_ok``."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.probing: set[str] = set()

    def watch(self, w: Worker) -> None:
        self.probing.add(w.id)

    def forget(self, worker_id: str) -> None:
        self.probing.discard(worker_id)

    def ping_ok(self, worker_id: str) -> None:
        """``/ping`` answered 200: what the real prober does then (only a probed worker can be seen ready)."""
        assert worker_id in self.probing, f"worker {worker_id} is not probed"
        w = self.pool.get(worker_id)
        assert w is not None
        if w.state in (WorkerState.STARTING, WorkerState.UNHEALTHY):
            self.pool.set_state(w, WorkerState.READY, "/ping 200")


class FakeBackend:
    """The Backend protocol in memory. A worker is an id in ``live``; the controller hears of workers through
    the calls a real backend makes: added when started (or found), exited when stopped or crashed, and a drain
    mark echoed back as the pod watch reports the annotation to every replica.

    Failures are set by the test: ``start_error``, ``mark_error``, ``stop_error`` (a StartFailed message), and
    ``instead[victim] = other`` (the ReplicaSet stops ``other`` when asked to stop ``victim``).
    """

    def __init__(self, events: WorkerEvents) -> None:
        self.events = events
        self.live: list[str] = []
        self.starts = 0
        self.announced: list[tuple[str, bool]] = []  # mark_draining calls that succeeded, in order
        self.start_error: str | None = None
        self.mark_error: str | None = None
        self.stop_error: str | None = None
        self.instead: dict[str, str] = {}
        self.on_announce: Callable[[str, bool], None] = lambda worker_id, draining: None
        self.closed = False

    @property
    def pending_starts(self) -> int:
        return 0  # every start is reported before start_worker returns

    def appear(self, worker_id: str, rank: int = 0) -> None:
        """A worker the backend finds rather than starts (a pod another replica started)."""
        self.live.append(worker_id)
        self.events.worker_added(WorkerAddress(worker_id, "10.0.0.1", 8000, 8000, rank))

    def crash(self, worker_id: str, reason: str = "exit code 3") -> None:
        self._exit(worker_id, reason)

    async def start_worker(self) -> None:
        await asyncio.sleep(0)  # an API call or a process start
        if self.start_error is not None:
            raise StartFailed(self.start_error)
        self.starts += 1
        self.appear(f"w{self.starts}")

    async def stop_worker(self, worker_id: str) -> bool:
        await asyncio.sleep(0)
        if self.stop_error is not None:
            raise StartFailed(self.stop_error)
        gone = self.instead.pop(worker_id, worker_id)
        if gone in self.live:
            self._exit(gone, "stopped" if gone == worker_id else f"stopped instead of {worker_id}")
        return gone == worker_id

    async def mark_draining(self, worker_id: str, draining: bool) -> None:
        await asyncio.sleep(0)
        if self.mark_error is not None:
            raise StartFailed(self.mark_error)
        self.announced.append((worker_id, draining))
        self.on_announce(worker_id, draining)
        asyncio.get_running_loop().call_soon(self.events.worker_draining, worker_id, draining)

    async def close(self) -> None:
        for worker_id in list(self.live):
            self._exit(worker_id, "shutdown")
        self.closed = True

    def describe(self, worker_id: str) -> dict[str, object]:
        return {"fake": True} if worker_id in self.live else {}

    def _exit(self, worker_id: str, reason: str) -> None:
        self.live.remove(worker_id)
        self.events.worker_exited(worker_id, reason)
