"""Per-second GPU cost accounting (README "Cost"): what each worker cost, by GPU category, tier and phase.

Billing follows the product page: a worker is billed per second from its start until it has fully stopped,
rounded up to the whole second when it stops; the ``workers.active`` workers at the active price, the others
at the flex price of their GPU category. Its time is split into phases: ``start`` (until ready), ``busy``
(at least one request or job in flight), ``idle`` (ready, nothing in flight), ``stopping`` (draining or
stopping) and ``unobserved`` (a Kubernetes pod that ran before this process saw it).

Which workers are the active ones: at every moment, the ``workers.active`` oldest workers that are not
leaving (draining or stopping). They are the ones the floor keeps; a worker started above the floor, or one
on its way out, pays the flex price. The tier of a worker can change during its life (the oldest flex worker
takes the place of an active one that stopped), so time is billed in segments of constant (phase, tier).

The ideal is the same requests' pure service time at the flex price: every worker's busy seconds (time with
a request in flight; concurrent requests on one worker count once), with no start, idle or stopping time.

A purely computational ledger: every call takes the time ``at`` from the caller's clock (monotonic seconds
for ``lbproxy serve``, a virtual clock for ``lbproxy simulate``); no I/O, no asyncio.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from .policy import WorkerState

__all__ = [
    "UNPRICED",
    "Ledger",
    "Phase",
    "Rate",
    "Tariff",
    "Tier",
    "Totals",
    "WorkerBill",
    "active_workers",
    "phase_for",
]


class Phase(StrEnum):
    # Hashed as the str it equals, in C: Enum's own __hash__ is Python code, and the request path (busy <->
    # idle) hashes a (tier, phase) key on every change.
    __hash__ = str.__hash__

    START = "start"
    BUSY = "busy"
    IDLE = "idle"
    STOPPING = "stopping"
    UNOBSERVED = "unobserved"


class Tier(StrEnum):
    __hash__ = str.__hash__  # as Phase

    ACTIVE = "active"
    FLEX = "flex"


# Enum members read through the class cost hundreds of nanoseconds each on Python 3.11; the request path
# (busy <-> idle) reads these module constants instead.
_BUSY, _IDLE, _START, _STOPPING = Phase.BUSY, Phase.IDLE, Phase.START, Phase.STOPPING
_EXITED, _STARTING = WorkerState.EXITED, WorkerState.STARTING
_LEAVING = frozenset({WorkerState.DRAINING, WorkerState.STOPPING})

UNPRICED = "none"
"""The category label of workers that have no price (no GPU category and no `cost.price_per_second`)."""

_EPSILON = 1e-9  # float sums of segments must not round 2.0000000001 s up to 3 s


@dataclass(frozen=True, slots=True)
class Rate:
    """Dollars per second of one worker, by tier."""

    flex: float
    active: float

    def of(self, tier: Tier) -> float:
        return self.active if tier is Tier.ACTIVE else self.flex


@dataclass(frozen=True, slots=True)
class Tariff:
    """The price of each category label; a category without a rate is counted in seconds only."""

    rates: Mapping[str, Rate] = field(default_factory=dict)

    def rate(self, category: str) -> Rate | None:
        return self.rates.get(category)


def phase_for(state: WorkerState, in_flight: int) -> Phase | None:
    """The billing phase of a worker in ``state`` with ``in_flight`` requests; None once it has exited.

    Serving is busy whatever the state (a draining worker may still finish a request).
    """
    if state is _EXITED:
        return None
    if in_flight > 0:
        return _BUSY
    if state is _STARTING:
        return _START
    if state in _LEAVING:
        return _STOPPING
    return _IDLE  # ready or unhealthy with nothing in flight: billed, serving nothing


Key = tuple[str, Tier, Phase]  # (category, tier, phase)


@dataclass(frozen=True, slots=True)
class Totals:
    """Billed seconds and dollars by (category, tier, phase), and the ideal, at one instant."""

    seconds: Mapping[Key, float] = field(default_factory=dict)
    dollars: Mapping[Key, float] = field(default_factory=dict)
    ideal_seconds: float = 0.0
    ideal_dollars: float = 0.0
    cold_starts: int = 0
    workers: int = 0  # workers billed to the end (stopped)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def total_dollars(self) -> float:
        return sum(self.dollars.values())

    @property
    def priced(self) -> bool:
        """Whether any second was billed at a price (else dollars mean nothing, only seconds do)."""
        return any(category != UNPRICED for category, _, _ in self.seconds)

    @property
    def efficiency(self) -> float | None:
        """Ideal / actual: in dollars when there are prices, else in seconds; None before anything was billed."""
        if self.priced:
            actual = self.total_dollars
            return self.ideal_dollars / actual if actual > 0 else None
        seconds = self.total_seconds
        return self.ideal_seconds / seconds if seconds > 0 else None

    def by_phase(self) -> dict[Phase, tuple[float, float]]:
        """Phase -> (seconds, dollars)."""
        out: dict[Phase, tuple[float, float]] = {}
        for (_, _, phase), seconds in self.seconds.items():
            s, d = out.get(phase, (0.0, 0.0))
            out[phase] = (s + seconds, d)
        for (_, _, phase), dollars in self.dollars.items():
            s, d = out.get(phase, (0.0, 0.0))
            out[phase] = (s, d + dollars)
        return out

    def by_category_tier(self) -> dict[tuple[str, Tier], tuple[float, float]]:
        """(category, tier) -> (seconds, dollars)."""
        out: dict[tuple[str, Tier], tuple[float, float]] = {}
        for (category, tier, _), seconds in self.seconds.items():
            s, d = out.get((category, tier), (0.0, 0.0))
            out[(category, tier)] = (s + seconds, d)
        for (category, tier, _), dollars in self.dollars.items():
            s, d = out.get((category, tier), (0.0, 0.0))
            out[(category, tier)] = (s, d + dollars)
        return out

    def share(self, phase: Phase) -> float | None:
        """The part of the spend (dollars, or seconds when unpriced) that went to ``phase``."""
        seconds, dollars = self.by_phase().get(phase, (0.0, 0.0))
        whole = self.total_dollars if self.priced else self.total_seconds
        part = dollars if self.priced else seconds
        return part / whole if whole > 0 else None

    def plus(self, other: Totals) -> Totals:
        return Totals(
            _added(self.seconds, other.seconds.items()),
            _added(self.dollars, other.dollars.items()),
            self.ideal_seconds + other.ideal_seconds,
            self.ideal_dollars + other.ideal_dollars,
            self.cold_starts + other.cold_starts,
            self.workers + other.workers,
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (for the state file); ``from_json`` reads it back."""
        keys = sorted(set(self.seconds) | set(self.dollars))
        return {
            "billed": [
                {"category": c, "tier": t.value, "phase": p.value,
                 "seconds": self.seconds.get((c, t, p), 0.0), "dollars": self.dollars.get((c, t, p), 0.0)}
                for c, t, p in keys
            ],
            "ideal_seconds": self.ideal_seconds,
            "ideal_dollars": self.ideal_dollars,
            "cold_starts": self.cold_starts,
            "workers": self.workers,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Totals:
        """Raises ValueError (or KeyError/TypeError) on a malformed document."""
        seconds: dict[Key, float] = {}
        dollars: dict[Key, float] = {}
        for row in data.get("billed", ()):
            key = (str(row["category"]), Tier(row["tier"]), Phase(row["phase"]))
            seconds[key] = _non_negative(row.get("seconds", 0.0))
            dollars[key] = _non_negative(row.get("dollars", 0.0))
        return cls(seconds, dollars, _non_negative(data.get("ideal_seconds", 0.0)),
                   _non_negative(data.get("ideal_dollars", 0.0)), int(data.get("cold_starts", 0)),
                   int(data.get("workers", 0)))


def _non_negative(value: object) -> float:
    number = float(value)  # type: ignore[arg-type]  # ValueError/TypeError for anything else: caller's error
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"not a non-negative number: {value!r}")
    return number


def _added(base: Mapping[Key, float], extra: Iterable[tuple[Key, float]]) -> dict[Key, float]:
    out = dict(base)
    for key, value in extra:
        out[key] = out.get(key, 0.0) + value
    return out


@dataclass(frozen=True, slots=True)
class WorkerBill:
    """One worker's bill so far (or final, once stopped)."""

    id: str
    category: str
    tier: Tier
    phase: Phase
    seconds: float  # time billed so far, unrounded
    billed_seconds: int  # rounded up to the second, as the final bill is
    dollars: float
    rate_per_second: float  # its price now (0 when unpriced)


@dataclass(slots=True)
class _Open:
    id: str
    category: str
    rate: Rate | None
    opened_at: float
    phase: Phase
    since: float  # start of the current segment
    tier: Tier = Tier.FLEX
    seconds: dict[tuple[Tier, Phase], float] = field(default_factory=dict)  # closed segments
    busy: float = 0.0

    def elapsed(self, at: float) -> float:
        return max(0.0, at - self.since)

    def price(self) -> float:
        return self.rate.of(self.tier) if self.rate is not None else 0.0

    def dollars(self, at: float) -> float:
        """Dollars so far: each tier's seconds at that tier's price (computed here, not per segment)."""
        if self.rate is None:
            return 0.0
        return sum(s * self.rate.of(t) for (t, _), s in self.seconds.items()) + self.elapsed(at) * self.price()


def active_workers(workers: Iterable[tuple[str, float, bool]], active: int) -> set[str]:
    """The ids billed at the active price: the ``active`` oldest of (id, opened at, leaving) not leaving."""
    staying = sorted((opened, wid) for wid, opened, leaving in workers if not leaving)
    return {wid for _, wid in staying[:active]}


class Ledger:
    """Open workers' running bills and the totals of everything billed, fed by phase changes."""

    def __init__(self, tariff: Tariff, active: int = 0, totals: Totals | None = None) -> None:
        self.tariff = tariff
        self.active = active
        self._open: dict[str, _Open] = {}
        closed = totals or Totals()
        self._seconds: dict[Key, float] = dict(closed.seconds)
        self._dollars: dict[Key, float] = dict(closed.dollars)
        self._ideal_seconds = closed.ideal_seconds
        self._ideal_dollars = closed.ideal_dollars
        self._cold_starts = closed.cold_starts
        self._workers = closed.workers

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self._open

    @property
    def open_ids(self) -> tuple[str, ...]:
        return tuple(self._open)

    # -- events ----------------------------------------------------------------------------------

    def open(self, worker_id: str, category: str, at: float, phase: Phase = Phase.START,
             cold_start: bool = True) -> None:
        """Start billing a worker at ``at`` (which may lie before the last event: a pod's start time).

        ``cold_start``: count it in ``cold_starts`` (not for a worker this process adopted mid-life).
        """
        if worker_id in self._open:
            return
        self._open[worker_id] = _Open(worker_id, category, self.tariff.rate(category), at, phase, at)
        if cold_start:
            self._cold_starts += 1
        self._assign_tiers(at)

    def phase(self, worker_id: str, phase: Phase, at: float) -> None:
        """The worker is in ``phase`` from ``at`` on."""
        w = self._open.get(worker_id)
        if w is None or w.phase is phase:
            return
        old = w.phase
        self._segment(w, at)
        w.phase = phase
        if old is _STOPPING or phase is _STOPPING:  # leaving or back: who is active may change
            self._assign_tiers(at)

    def close(self, worker_id: str, at: float) -> WorkerBill | None:
        """The worker has fully stopped at ``at``: its bill is rounded up to the second and added to the totals."""
        w = self._open.pop(worker_id, None)
        if w is None:
            return None
        self._segment(w, at)
        raw = sum(w.seconds.values())
        billed = math.ceil(raw - _EPSILON) if raw > _EPSILON else 0
        extra = max(0.0, billed - raw)  # the rounding, billed in the phase the worker ended in
        if extra:
            w.seconds[(w.tier, w.phase)] = w.seconds.get((w.tier, w.phase), 0.0) + extra
        for (tier, phase), seconds in w.seconds.items():
            key = (w.category, tier, phase)
            self._seconds[key] = self._seconds.get(key, 0.0) + seconds
            self._dollars[key] = self._dollars.get(key, 0.0) + (seconds * w.rate.of(tier) if w.rate else 0.0)
        self._ideal_seconds += w.busy
        self._ideal_dollars += w.busy * w.rate.flex if w.rate else 0.0
        self._workers += 1
        bill = WorkerBill(w.id, w.category, w.tier, w.phase, raw, billed, w.dollars(at), 0.0)
        self._assign_tiers(at)
        return bill

    # -- reading ---------------------------------------------------------------------------------

    def totals(self, at: float) -> Totals:
        """Everything billed up to ``at``: stopped workers' final bills plus open workers' time so far."""
        seconds = dict(self._seconds)
        dollars = dict(self._dollars)
        ideal_seconds, ideal_dollars = self._ideal_seconds, self._ideal_dollars
        for w in self._open.values():
            current = ((w.tier, w.phase), w.elapsed(at))
            for (tier, phase), s in (*w.seconds.items(), current):
                key = (w.category, tier, phase)
                seconds[key] = seconds.get(key, 0.0) + s
                dollars[key] = dollars.get(key, 0.0) + (s * w.rate.of(tier) if w.rate else 0.0)
            busy = w.busy + (w.elapsed(at) if w.phase is Phase.BUSY else 0.0)
            ideal_seconds += busy
            ideal_dollars += busy * w.rate.flex if w.rate else 0.0
        return Totals(seconds, dollars, ideal_seconds, ideal_dollars, self._cold_starts, self._workers)

    def bill(self, worker_id: str, at: float) -> WorkerBill | None:
        w = self._open.get(worker_id)
        if w is None:
            return None
        raw = sum(w.seconds.values()) + w.elapsed(at)
        return WorkerBill(w.id, w.category, w.tier, w.phase, raw, math.ceil(raw - _EPSILON) if raw > _EPSILON
                          else 0, w.dollars(at), w.price())

    def rate_per_second(self) -> float:
        """What the open workers cost per second now."""
        return sum(w.price() for w in self._open.values())

    def set_active(self, active: int, at: float) -> None:
        """``workers.active`` changed (a reload): the active tier is chosen again from now on."""
        self.active = active
        self._assign_tiers(at)

    def next_prices(self, category: str, count: int, extra_staying: int = 0) -> list[float]:
        """Per-second prices of ``count`` more workers of ``category`` started now, in order.

        ``extra_staying``: workers on their way that the ledger does not bill yet (accepted starts): they
        take active places first.
        """
        rate = self.tariff.rate(category)
        if rate is None:
            return [0.0] * count
        staying = sum(1 for w in self._open.values() if w.phase is not Phase.STOPPING) + extra_staying
        return [rate.active if staying + i < self.active else rate.flex for i in range(count)]

    # -- internals -------------------------------------------------------------------------------

    def _segment(self, w: _Open, at: float) -> None:
        """Close the worker's current segment at ``at`` and start the next one there. On the request path
        (busy <-> idle), so it only adds seconds; dollars are worked out when read."""
        dt = at - w.since
        if dt > 0:  # an earlier ``at`` (a clock that went back) adds nothing and keeps the segment's start
            key = (w.tier, w.phase)
            seconds = w.seconds
            seconds[key] = seconds.get(key, 0.0) + dt
            if w.phase is _BUSY:
                w.busy += dt
            w.since = at

    def _assign_tiers(self, at: float) -> None:
        chosen = active_workers(((w.id, w.opened_at, w.phase is Phase.STOPPING) for w in self._open.values()),
                                self.active)
        for w in self._open.values():
            tier = Tier.ACTIVE if w.id in chosen else Tier.FLEX
            if tier is not w.tier:
                self._segment(w, at)
                w.tier = tier
