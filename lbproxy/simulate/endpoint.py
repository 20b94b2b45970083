"""One endpoint on a virtual clock: the real scaling policy, routing and billing, with simulated workers.

What runs is lbproxy's own code: ``policy.decide`` for every decision, ``routing.choose_worker`` and
``routing.burst_share`` for every dispatch, ``control_timing`` for when the controller decides and backs off,
``spend.starts_allowed`` for ``cost.max_per_hour``, and ``billing.Ledger`` for the bill. What is simulated is
what lies around them, as ``lbproxy serve`` does it:

- the pool (``pool.py``): a FIFO queue that no new request overtakes; a request that finds no waiter and a
  ready worker with a free slot takes it at once; ``limits.max_queue`` (429) and ``timeouts.wait`` (503);
- the controller (``controller.py``): a decision every tick (1 s), sooner when the policy says when a condition
  changes, and at once when a request queues or a worker changes state; starts, drains (an idle worker drained is
  stopped at once) and replacements of workers not ready within ``timeouts.init``, with the start back-off and
  its fail-fast 503s;
- the workers: ready after their cold start (``ColdStart``), serving each request for its service time from the
  trace (cut at ``timeouts.execution``: a 504), gone ``stop_time`` after they are told to stop;
- the cost meter (``cost.py``): the ledger is opened when a worker starts, told every phase change, closed when
  it has stopped.

``workers.active`` workers are up and warm when the trace starts (a slice of a running endpoint's traffic), and
billed from then on. Pure: no asyncio, no I/O.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..billing import Ledger, Phase, phase_for
from ..config import Config
from ..control_timing import fails_fast, next_decision_in, start_backoff
from ..policy import Snapshot, WorkerState, WorkerView, decide
from ..policy_settings import scaling_settings
from ..prices import tariff_for
from ..routing import COLD_STARTS_KEPT, burst_share, choose_worker
from ..spend import starts_allowed
from .coldstart import ColdStart
from .engine import EventQueue, Order
from .results import Outcome
from .traces import Trace

__all__ = ["Model", "simulate"]

_STARTING, _READY, _DRAINING, _STOPPING, _EXITED = (
    WorkerState.STARTING, WorkerState.READY, WorkerState.DRAINING, WorkerState.STOPPING, WorkerState.EXITED)
_BUSY = Phase.BUSY
_OK, _NO_WORKER, _QUEUE_FULL, _EXECUTION = 200, 503, 429, 504
_WORKER, _DONE, _ARRIVAL, _TIMEOUT, _REDISPATCH, _DECIDE = (
    int(Order.WORKER), int(Order.DONE), int(Order.ARRIVAL), int(Order.TIMEOUT), int(Order.REDISPATCH),
    int(Order.DECIDE))
_SERIES_KEPT = 200_000  # points of the workers/queue series at most (a day of busy traffic stays well under)


@dataclass(frozen=True, slots=True)
class Model:
    """What the simulation assumes beyond the config."""

    cold_start: ColdStart
    stop_time: float = 0.0  # from "stop" to gone (SIGTERM to exit; a pod's termination)
    seed: int = 0  # routing's ties and random cold starts
    record: bool = True  # keep the workers/queue series (for plots)
    # The first part of each cold start, before the backend reports the worker: ``lbproxy serve`` bills a
    # worker, and times its start, from then on (the local backend's process spawn). None: from the decision.
    # bench/sim_vs_real.py replays a real run's own, worker by worker.
    unbilled: ColdStart | None = None
    stop_times: ColdStart | None = None  # each worker's own stop time, by start order (seq): in place of stop_time


@dataclass(eq=False, slots=True)
class _Worker:
    """A simulated worker; ``id`` and ``in_flight`` are what routing reads."""

    id: str
    state: WorkerState
    since: float
    started_at: float
    in_flight: int = 0
    idle_since: float | None = None
    ready_at: float | None = None
    rank: int = 0
    number: int = 0  # started n-th (0-based): the index of its cold start and stop time


@dataclass(slots=True)
class _Counts:
    served: int = 0
    no_worker: int = 0
    queue_full: int = 0
    execution: int = 0
    hit_cold_start: int = 0
    failed_starts: int = 0
    queued_at_max: int = 0
    capped: int = 0
    peak_workers: int = 0
    series: list[tuple[float, int, int]] = field(default_factory=list)


class _Endpoint:
    def __init__(self, config: Config, trace: Trace, model: Model) -> None:
        self.settings = scaling_settings(config)
        self.concurrency = config.workers.concurrency
        self.max_queue = config.limits.max_queue
        self.wait_timeout = config.timeouts.wait
        self.execution = config.timeouts.execution
        self.max_per_hour = config.cost.max_per_hour
        tariff, default, new = tariff_for(config)
        kubernetes_pools = config.backend.type == "kubernetes" and config.gpu.categories
        self.category = config.gpu.categories[0] if kubernetes_pools else default  # the first choice's pool
        self.new_category = new  # the spend limit prices a start at the dearest pool it may land in
        self.ledger = Ledger(tariff, config.workers.active)
        self.model = model
        self.arrivals = trace.arrivals
        self.services = trace.services
        self.waits = [0.0] * len(trace)
        self.rng = random.Random(model.seed)
        uniform = self.rng.random
        self.rand = lambda n: int(uniform() * n)  # routing's tie-break, 0..n-1: far cheaper than randrange
        self.cold_rng = random.Random(model.seed + 1)
        self.events = EventQueue()
        self.workers: dict[str, _Worker] = {}
        self.ready: tuple[_Worker, ...] = ()
        self.queue: deque[int] = deque()  # request indexes, oldest first
        self.burst = False  # requests queued while no worker was ready, and the queue has not emptied since
        self.cold_starts: deque[float] = deque(maxlen=COLD_STARTS_KEPT)
        self.started = 0
        self.failed_in_a_row = 0
        self.blocked_until = 0.0
        self.fail_fast = False
        self.changed = False
        self.deciding = False
        self.decide_at = float("inf")
        self.decide_seq = 0
        self.timeout_pending = False
        self.redispatch_pending = False
        self.last_change = 0.0
        self.counts = _Counts()

    # -- workers ---------------------------------------------------------------------------------------

    def start(self, now: float, warm: bool = False) -> None:
        """A new worker (``warm``: already up when the trace starts, one of ``workers.active``)."""
        wid = f"w{self.started + 1}"
        self.started += 1
        w = _Worker(wid, _READY if warm else _STARTING, now, now, number=self.started - 1)
        self.workers[wid] = w
        self.counts.peak_workers = max(self.counts.peak_workers, len(self.workers))
        if warm:
            w.ready_at, w.idle_since = now, now
            self.ledger.open(wid, self.category, now, Phase.IDLE, cold_start=False)
            self.ready = (*self.ready, w)
        else:
            cold = self.model.cold_start.sample(self.cold_rng, self.started - 1)
            unbilled = self.model.unbilled
            lead = min(cold, unbilled.sample(self.cold_rng, self.started - 1)) if unbilled is not None else 0.0
            if lead > 0:  # known to the pool (and billed) only once the backend has it, as serve does
                w.started_at = w.since = now + lead
                self.events.push(now + lead, Order.WORKER, (w, None))
            else:
                self.ledger.open(wid, self.category, now)
            self.events.push(now + cold, Order.WORKER, (w, _READY))
        self.changed_now(now)

    def set_state(self, w: _Worker, state: WorkerState, now: float) -> None:
        """As ``WorkerPool.set_state`` and its listeners (the cost meter, the controller) do it."""
        old = w.state
        if old is state or old is _EXITED:
            return
        w.state, w.since = state, now
        if state is _READY:
            if w.ready_at is None:
                w.ready_at = now
                self.cold_starts.append(now - w.started_at)
            if w.in_flight == 0:
                w.idle_since = now
            if old is _STARTING:
                self.failed_in_a_row = 0
        if state is _EXITED:
            del self.workers[w.id]
            self.ledger.close(w.id, now)
        else:
            phase = phase_for(state, w.in_flight)
            if phase is not None:
                self.ledger.phase(w.id, phase, now)
        if state is _READY or old is _READY:
            self.ready = tuple(x for x in self.workers.values() if x.state is _READY)
        self.last_change = now
        self.changed_now(now)
        if self.queue and (state is _READY or old is _STARTING):
            self.dispatch(now)

    def stop(self, w: _Worker, now: float) -> None:
        self.set_state(w, _STOPPING, now)
        stops = self.model.stop_times
        took = self.model.stop_time if stops is None else stops.sample(self.cold_rng, w.number)
        self.events.push(now + took, Order.WORKER, (w, _EXITED))

    # -- requests --------------------------------------------------------------------------------------

    def arrive(self, i: int, now: float) -> None:
        """As ``WorkerPool._wait``: take a free slot unless others wait, else fail fast, refuse, or queue."""
        queue = self.queue
        if not queue and self.ready:
            w = choose_worker(self.ready, self.concurrency, None, self.rand)
            if w is not None:
                self.hand(i, w, now)
                return
        if self.fail_fast and not self.ready:
            self.counts.no_worker += 1
            return
        if len(queue) >= self.max_queue:
            self.counts.queue_full += 1
            return
        queue.append(i)
        if not self.timeout_pending:
            self.timeout_pending = True
            self.events.push(now + self.wait_timeout, Order.TIMEOUT)
        if len(self.workers) >= self.settings.max:
            self.counts.queued_at_max += 1
        if not self.ready:
            self.burst = True
        self.changed_now(now)
        self.dispatch(now)

    def hand(self, i: int, w: _Worker, now: float) -> None:
        w.in_flight += 1
        w.idle_since = None
        if w.in_flight == 1:
            self.ledger.phase(w.id, _BUSY, now)
        arrived = self.arrivals[i]
        self.waits[i] = now - arrived
        ready_at = w.ready_at
        if ready_at is not None and ready_at > arrived:
            self.counts.hit_cold_start += 1
        service = self.services[i]
        if self.execution and service > self.execution:
            service = self.execution
            self.counts.execution += 1
        else:
            self.counts.served += 1
        self.events.push(now + service, Order.DONE, w)

    def done(self, w: _Worker, now: float) -> None:
        """As ``WorkerPool._release``."""
        w.in_flight -= 1
        if w.in_flight == 0:
            w.idle_since = now
            phase = phase_for(w.state, 0)
            if phase is not None:
                self.ledger.phase(w.id, phase, now)
        self.last_change = now
        if self.queue:
            self.dispatch(now)

    def dispatch(self, now: float) -> None:
        """As ``WorkerPool._dispatch``: free slots to waiters, oldest first, within the cold-start share."""
        limit = self.share(now)
        queue = self.queue
        while queue:
            w = choose_worker(self.ready, limit, None, self.rand)
            if w is None:
                return
            self.hand(queue.popleft(), w, now)
        self.burst = False

    def share(self, now: float) -> int:
        limit = self.concurrency
        if not self.burst or not self.ready:
            return limit
        starting = [w.started_at for w in self.workers.values() if w.state is _STARTING]
        demand = sum(w.in_flight for w in self.ready) + len(self.queue)
        expected = max(self.cold_starts) if self.cold_starts else None
        share, again = burst_share(limit, len(self.ready), demand, starting, now, expected)
        if again is not None and not self.redispatch_pending:
            self.redispatch_pending = True
            self.events.push(now + max(0.01, again - now), Order.REDISPATCH)
        return share

    def time_out(self, now: float) -> None:
        """The oldest waiters reach ``timeouts.wait``: 503 (every waiter has the same limit, so they are first)."""
        self.timeout_pending = False
        queue, arrivals, limit = self.queue, self.arrivals, self.wait_timeout
        while queue and arrivals[queue[0]] + limit <= now:
            i = queue.popleft()
            self.waits[i] = now - arrivals[i]
            self.counts.no_worker += 1
        if queue:
            self.timeout_pending = True
            self.events.push(arrivals[queue[0]] + limit, Order.TIMEOUT)
        else:
            self.burst = False

    # -- the controller --------------------------------------------------------------------------------

    def changed_now(self, now: float) -> None:
        """``pool.changed.set()``: the controller decides at once (after what else happens at this instant)."""
        self.changed = True
        if not self.deciding and self.decide_at > now:
            self.schedule_decision(now)

    def schedule_decision(self, at: float) -> None:
        self.decide_at = at
        self.decide_seq = self.events.push(at, Order.DECIDE)

    def decide(self, now: float) -> None:
        """One turn of ``Controller.run``: snapshot, policy, spend limit, apply, tell the pool, wait."""
        self.deciding = True
        self.changed = False
        queue = self.queue
        snap = Snapshot(
            now,
            tuple(WorkerView(w.id, w.state, w.in_flight, w.since, None if w.in_flight else w.idle_since, w.rank)
                  for w in self.workers.values()),
            len(queue),
            self.arrivals[queue[0]] if queue else None,
            self.blocked_until,
        )
        d = decide(snap, self.settings)
        if d.start:
            check = starts_allowed(self.ledger, self.new_category, d.start, 0, self.max_per_hour)
            if check.allowed != d.start:
                self.counts.capped += 1
                d = replace(d, start=check.allowed)
        if d.changes_anything:
            for wid, _why in d.stop:
                w = self.workers.get(wid)
                if w is not None:
                    if w.ready_at is None:  # never ready within timeouts.init: a failed start, backed off
                        self.failed_in_a_row += 1
                        self.counts.failed_starts += 1
                        self.blocked_until = now + start_backoff(self.failed_in_a_row)
                    self.stop(w, now)
            for wid in d.drain:
                w = self.workers.get(wid)
                if w is not None:
                    self.set_state(w, _DRAINING, now)
                    self.stop(w, now)  # idle: drained at once
            for _ in range(d.start):
                self.start(now)
        self.tell_pool(now)
        self.deciding = False
        if self.model.record:
            self.record(now)
        self.schedule_decision(now if self.changed else now + next_decision_in(d.recheck_after))

    def tell_pool(self, now: float) -> None:
        """``Controller._tell_pool``: after failed starts, requests no ready worker can take may fail at once."""
        self.fail_fast = bool(self.failed_in_a_row) and fails_fast(self.failed_in_a_row, now, self.blocked_until)
        if self.fail_fast and not self.ready and self.queue:
            for i in self.queue:
                self.waits[i] = now - self.arrivals[i]
            self.counts.no_worker += len(self.queue)
            self.queue.clear()
            self.burst = False

    def record(self, now: float) -> None:
        series = self.counts.series
        point = (now, len(self.workers), len(self.queue))
        if (not series or series[-1][1:] != point[1:]) and len(series) < _SERIES_KEPT:
            series.append(point)

    def quiet(self) -> bool:
        """Nothing left to happen but the active workers idling."""
        if self.queue or len(self.workers) > self.settings.active:
            return False
        return all(w.state is _READY and w.in_flight == 0 for w in self.workers.values())

    # -- the run ---------------------------------------------------------------------------------------

    def run(self, horizon: float) -> float:
        """Process every event until the trace is done and the endpoint is quiet (or ``horizon``); returns the
        time the last thing happened."""
        for _ in range(self.settings.active):
            self.start(0.0, warm=True)
        self.schedule_decision(0.0)
        arrivals, n, i = self.arrivals, len(self.arrivals), 0
        heap = self.events.heap
        pop = self.events.pop
        while True:
            if i < n and (not heap or (at := arrivals[i]) < heap[0][0] or (at == heap[0][0] and heap[0][1] > _ARRIVAL)):
                self.arrive(i, arrivals[i])
                i += 1
                continue
            if not heap or heap[0][0] > horizon:
                break
            now, order, seq, payload = pop()
            if order == _DONE:
                assert isinstance(payload, _Worker)
                self.done(payload, now)
            elif order == _DECIDE:
                if seq != self.decide_seq:
                    continue  # replaced by an earlier wake-up
                self.decide_at = float("inf")
                if i >= n and self.quiet():
                    break
                self.decide(now)
            elif order == _WORKER:
                assert isinstance(payload, tuple)
                w, state = payload
                if state is None:  # the backend reports the worker (Model.unbilled): billed from now on
                    if w.state is not _EXITED:
                        self.ledger.open(w.id, self.category, now)
                elif state is _EXITED or w.state is _STARTING:  # a worker stopped before its ready time stays so
                    self.set_state(w, state, now)
            elif order == _TIMEOUT:
                self.time_out(now)
            else:
                self.redispatch_pending = False
                if self.queue:
                    self.dispatch(now)
        return self.last_change


def simulate(config: Config, trace: Trace, model: Model, settings: Mapping[str, Any] | None = None) -> Outcome:
    """Replay ``trace`` through an endpoint configured by ``config``; ``settings`` labels the outcome."""
    began = time.perf_counter()
    ep = _Endpoint(config, trace, model)
    longest = max(trace.services, default=0.0)
    if config.timeouts.execution:
        longest = min(longest, config.timeouts.execution)
    # However it goes, everything has happened by then: a safety net against a model that never settles.
    horizon = (trace.duration + config.timeouts.wait + longest + config.timeouts.idle + config.timeouts.init
               + model.stop_time + 3600.0)
    last = ep.run(horizon)
    end = max(trace.duration, last)
    c = ep.counts
    if model.record:
        ep.record(end)
    return Outcome(
        settings=dict(settings or {}),
        totals=ep.ledger.totals(end),
        end=end,
        requests=len(trace),
        served=c.served,
        rejected_503=c.no_worker,
        rejected_429=c.queue_full,
        timed_out_504=c.execution,
        waits=sorted(ep.waits),
        cold_starts=ep.ledger.totals(end).cold_starts,
        failed_starts=c.failed_starts,
        hit_cold_start=c.hit_cold_start,
        peak_workers=c.peak_workers,
        queued_at_max=c.queued_at_max,
        capped_starts=c.capped,
        series=tuple(c.series),
        wall_seconds=time.perf_counter() - began,
    )
