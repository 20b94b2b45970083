"""The scaling policy: how many workers to start, which to drain, which to replace.

A purely computational function of a snapshot and the settings, with the clock inside the snapshot: no
I/O, no asyncio, no aiohttp. The controller (``controller.py``) builds the snapshot and carries out the
decision; every behaviour here is tested with plain values (``tests/test_policy.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class WorkerState(StrEnum):
    """Where a worker is in its life. Only READY workers get requests."""

    STARTING = "starting"  # process/pod up, /ping not yet 200 (204 = loading)
    READY = "ready"  # /ping 200: routable
    UNHEALTHY = "unhealthy"  # /ping failing after being ready: no new requests
    DRAINING = "draining"  # chosen for scale-down: no new requests, waits for in-flight to end
    STOPPING = "stopping"  # being stopped by the backend
    EXITED = "exited"  # gone


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What the policy needs to know about one worker."""

    id: str
    state: WorkerState
    in_flight: int
    since: float  # clock time the worker entered ``state``
    idle_since: float | None  # clock time in-flight last dropped to 0; None while busy
    rank: int = 0  # placement preference of its pool (0 = first GPU choice): scale-down removes high ranks first


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The endpoint's load at one instant."""

    now: float
    workers: tuple[WorkerView, ...]
    queued: int = 0
    oldest_queued_at: float | None = None
    start_blocked_until: float = 0.0  # crash-loop back-off: no starts before this time
    pending_starts: int = 0  # starts the backend accepted whose workers it does not report yet (pods)


@dataclass(frozen=True, slots=True)
class ScalingSettings:
    """The tunables, from the config's ``workers``, ``scaling`` and ``timeouts`` sections."""

    active: int = 0
    max: int = 3
    concurrency: int = 0
    strategy: Literal["queue_delay", "request_count"] = "queue_delay"
    queue_delay: float = 4.0
    requests_per_worker: int = 4
    idle_timeout: float = 5.0
    init_timeout: float = 420.0
    # An unhealthy worker may recover (a long GC pause, a slow /ping under load); it is replaced only
    # when it stays unhealthy this long and has no request left to finish.
    unhealthy_grace: float = 10.0


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do now. ``desired`` is the live worker count the policy aims for."""

    desired: int
    start: int = 0
    drain: tuple[str, ...] = ()
    stop: tuple[tuple[str, str], ...] = ()  # (worker id, why): broken workers to replace
    reason: str = ""
    recheck_after: float | None = None  # seconds until a condition may change; None = next tick

    @property
    def changes_anything(self) -> bool:
        return bool(self.start or self.drain or self.stop)


_PRESENT = frozenset(
    {WorkerState.STARTING, WorkerState.READY, WorkerState.UNHEALTHY, WorkerState.DRAINING, WorkerState.STOPPING}
)


def decide(snap: Snapshot, cfg: ScalingSettings) -> Decision:
    """Return the scaling decision for ``snap``.

    Live workers are those starting or ready: they are (or will be) capacity. Unhealthy, draining and
    stopping workers still hold a machine (and a GPU), so they count against ``max`` but not as capacity.
    """
    now = snap.now
    stop: list[tuple[str, str]] = []
    live = starting = ready = present = in_progress = 0
    idle: list[tuple[int, float, str]] = []
    wakes: list[float] = []

    for w in snap.workers:
        if w.state in _PRESENT:
            present += 1
        in_progress += w.in_flight
        if w.state is WorkerState.STARTING:
            age = now - w.since
            if age >= cfg.init_timeout:
                stop.append((w.id, f"not ready within timeouts.init ({cfg.init_timeout:g}s)"))
                continue
            wakes.append(cfg.init_timeout - age)
            live += 1
            starting += 1
        elif w.state is WorkerState.READY:
            live += 1
            ready += 1
            if w.in_flight == 0 and w.idle_since is not None:
                idle_for = now - w.idle_since
                if idle_for >= cfg.idle_timeout:
                    idle.append((w.rank, idle_for, w.id))
                else:
                    wakes.append(cfg.idle_timeout - idle_for)
        elif w.state is WorkerState.UNHEALTHY:
            age = now - w.since
            if age >= cfg.unhealthy_grace and w.in_flight == 0:
                stop.append((w.id, f"unhealthy for {age:.0f}s"))
            elif age < cfg.unhealthy_grace:
                wakes.append(cfg.unhealthy_grace - age)
            # else: it finishes its requests first; the regular tick looks again

    # Starts the backend accepted but cannot show yet are capacity on its way, like starting workers.
    live += snap.pending_starts
    starting += snap.pending_starts
    present += snap.pending_starts
    wait = now - snap.oldest_queued_at if snap.queued and snap.oldest_queued_at is not None else 0.0
    demand, reason = _demand(snap.queued, wait, in_progress, live, starting, cfg)
    load = _by_request_count(snap.queued, in_progress, cfg)
    if snap.queued and cfg.strategy == "queue_delay" and wait <= cfg.queue_delay:
        wakes.append(max(cfg.queue_delay - wait, 0.01))  # look again just after the threshold passes
    desired = min(max(demand, cfg.active), cfg.max)

    start = max(0, desired - live)
    room = cfg.max - present  # never more processes than workers.max, whatever their state
    if start > room:
        start = max(0, room)
    if start and now < snap.start_blocked_until:
        reason = f"backing off after failed starts ({snap.start_blocked_until - now:.1f}s left)"
        wakes.append(snap.start_blocked_until - now)
        start = 0

    drain: tuple[str, ...] = ()
    floor = max(cfg.active, load)
    # Only ready workers count toward what stays: draining a ready worker in favour of one still loading
    # would leave the endpoint with no capacity for up to timeouts.init.
    surplus = ready - floor
    if surplus > 0 and idle and snap.queued == 0:
        idle.sort(reverse=True)  # fallback pools first, then the longest idle
        drain = tuple(wid for _, _, wid in idle[:surplus])
        desired = min(live - len(drain), cfg.max)
        reason = f"{len(drain)} worker(s) idle for >= timeouts.idle ({cfg.idle_timeout:g}s)"

    return Decision(
        desired=desired,
        start=start,
        drain=drain,
        stop=tuple(stop),
        reason=reason if (start or drain) else (stop[0][1] if stop else reason),
        recheck_after=min(wakes) if wakes else None,
    )


def _by_request_count(queued: int, in_progress: int, cfg: ScalingSettings) -> int:
    """The request-count target, ceil((queued + in progress) / requests_per_worker): the strategy's own rule, and
    under queue_delay the rule for unlimited concurrency (``workers.concurrency: 0``). Then a worker takes every
    request at once and queues it inside, where lbproxy cannot see it: nothing waits in lbproxy's queue, so the
    queue delay never grows and would never add a worker; the requests in flight are the measure of load instead.
    Also the floor scale-down keeps."""
    if cfg.strategy == "request_count" or cfg.concurrency == 0:
        return math.ceil((queued + in_progress) / cfg.requests_per_worker)
    return 0


def _demand(
    queued: int, wait: float, in_progress: int, live: int, starting: int, cfg: ScalingSettings
) -> tuple[int, str]:
    """Live workers the load asks for, before clamping to [active, max]."""
    load = _by_request_count(queued, in_progress, cfg)
    counted = f"ceil(({queued} queued + {in_progress} in progress) / {cfg.requests_per_worker}) = {load}"
    if cfg.strategy == "request_count":
        return load, f"request_count: {counted}"
    demand, reason = live, ""
    if queued and live == 0:
        # Scale from zero at once: nobody can serve the queue, waiting for queue_delay only adds latency.
        demand, reason = 1, f"cold start: {queued} request(s) queued and no worker"
    elif queued and wait > cfg.queue_delay:
        # Workers already starting will take queued requests; add only what they cannot absorb, so a
        # burst does not start a worker per tick while the first ones are still loading.
        need = math.ceil(queued / cfg.concurrency) if cfg.concurrency else 1
        demand = live + max(0, need - starting)
        reason = (
            f"queue_delay: oldest request waited {wait:.1f}s > {cfg.queue_delay:g}s "
            f"({queued} queued, {starting} starting)"
        )
    if load > demand:
        demand, reason = load, f"queue_delay with unlimited concurrency, by requests in flight: {counted}"
    if demand < cfg.active:
        reason = f"below workers.active ({live} live < {cfg.active})"
    return demand, reason


@dataclass(frozen=True, slots=True)
class PeerLoad:
    """Another proxy replica's load, as its admin port reports it."""

    queued: int
    oldest_wait: float  # seconds the oldest of its queued requests has waited
    workers: tuple[tuple[str, int, float], ...]  # (worker id, in flight, idle seconds)


def merge_peer_load(snap: Snapshot, peers: tuple[PeerLoad, ...]) -> Snapshot:
    """The whole endpoint's load: this replica's snapshot plus every peer's queue and in-flight counts.

    A worker is idle only when idle on every replica, since the most recent request any of them sent it. A
    peer reports only the workers it had ready or busy; one still starting here is ready there (a queue
    endpoint's worker pod is in touch with one replica only), so it counts as ready, idle since the peer says.
    """
    if not peers:
        return snap
    now = snap.now
    queued = snap.queued + sum(p.queued for p in peers)
    oldest = snap.oldest_queued_at
    for p in peers:
        if p.queued:
            at = now - p.oldest_wait
            oldest = at if oldest is None else min(oldest, at)
    extra: dict[str, tuple[int, float]] = {}
    for p in peers:
        for wid, in_flight, idle in p.workers:
            busy, latest = extra.get(wid, (0, 0.0))
            extra[wid] = (busy + in_flight, max(latest, now - idle))
    workers = []
    for w in snap.workers:
        if w.id not in extra:
            workers.append(w)
            continue
        busy, latest = extra[w.id]
        in_flight = w.in_flight + busy
        state, since, own_idle = w.state, w.since, w.idle_since
        if state is WorkerState.STARTING:
            state, own_idle = WorkerState.READY, latest
        idle_since = None if in_flight or own_idle is None else max(own_idle, latest)
        workers.append(WorkerView(w.id, state, in_flight, since, idle_since, w.rank))
    return Snapshot(now, tuple(workers), queued, oldest, snap.start_blocked_until, snap.pending_starts)
