"""Which setting to deploy: the Pareto front of cost against p99 wait, a recommendation, and the product page's
rules of thumb checked against what the simulation showed.

The rules (the endpoint settings page): start with the idle timeout at the cold-start time; lower the queue
delay to 2-3 s; plan 20% headroom in max workers (and never 1); use active workers for latency-sensitive
traffic. Each note says what the simulated numbers say about the rule for this trace, with the setting that
differs only in that key when the grid has one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..billing import Phase
from ..config import Config
from ..durations import format_duration, parse_duration
from ..prices import tariff_for
from .results import Outcome

__all__ = ["Advice", "advise", "pareto_front"]


@dataclass(frozen=True, slots=True)
class Advice:
    front: tuple[int, ...]  # indexes of the settings on the Pareto front, cheapest first
    chosen: int | None  # the recommended setting (None for a single setting)
    why: str
    notes: tuple[str, ...]


def _cost(o: Outcome) -> float:
    """Dollars, or worker-seconds when nothing is priced."""
    return o.cost if o.totals.priced else o.totals.total_seconds


def money(o: Outcome, value: float | None = None) -> str:
    v = _cost(o) if value is None else value
    return f"${v:,.4f}" if o.totals.priced else f"{v:,.0f} worker-s"


def pareto_front(outcomes: Sequence[Outcome]) -> tuple[int, ...]:
    """Settings no other one beats on both cost and p99 wait (equal on one, better on the other counts)."""
    points = [(_cost(o), o.wait(99), i) for i, o in enumerate(outcomes)]
    front = []
    for c, p, i in points:
        dominated = any(c2 <= c and p2 <= p and (c2 < c or p2 < p) for c2, p2, _ in points)
        if not dominated:
            front.append(i)
    return tuple(sorted(front, key=lambda i: (points[i][0], points[i][1], i)))


def _neighbour(outcomes: Sequence[Outcome], i: int, key: str, want: float) -> int | None:
    """The setting that differs from ``i`` only in ``key``, with the value nearest ``want``."""
    base = outcomes[i].settings
    best: tuple[float, int] | None = None
    for j, o in enumerate(outcomes):
        if j == i or key not in o.settings or set(o.settings) != set(base):
            continue
        if any(o.settings[k] != base[k] for k in base if k != key):
            continue
        value = _value(o.settings[key])
        if value is None:
            continue
        gap = abs(value - want)
        if best is None or gap < best[0]:
            best = (gap, j)
    return None if best is None else best[1]


def _value(text: object) -> float | None:
    try:
        return parse_duration(str(text))
    except ValueError:
        return None


def _compare(outcomes: Sequence[Outcome], i: int, j: int) -> str:
    a, b = outcomes[i], outcomes[j]
    labels = ", ".join(f"{k}={v}" for k, v in b.settings.items() if a.settings.get(k) != v)
    return (f"with {labels}: {money(b)} and p99 wait {b.wait(99):.2f}s "
            f"(vs {money(a)} and {a.wait(99):.2f}s)")


def _notes(outcomes: Sequence[Outcome], configs: Sequence[Config], i: int, cold: float, duration: float
           ) -> list[str]:
    o, cfg = outcomes[i], configs[i]
    notes: list[str] = []
    idle = cfg.timeouts.idle
    rule = f"timeouts.idle {format_duration(idle)} vs the cold start {format_duration(cold)}"
    j = _neighbour(outcomes, i, "timeouts.idle", cold)
    if o.cold_starts == 0:
        notes.append(f"{rule}: no worker was started beyond workers.active, so the idle timeout did not matter "
                     f"for this trace")
    elif idle < cold * 0.8:
        notes.append(f"{rule}: the page advises starting at the cold-start time; {o.cold_starts} workers were "
                     f"started, {o.hit_cold_start} requests waited for one" + (f"; {_compare(outcomes, i, j)}" if j
                                                                               is not None else ""))
    elif idle > cold * 1.25:
        share = o.totals.share(Phase.IDLE) or 0.0
        notes.append(f"{rule}: longer than the page's starting point, which fewer cold starts repay here "
                     f"({o.hit_cold_start} requests waited for one; idle time is {share:.0%} of the bill)"
                     + (f"; {_compare(outcomes, i, j)}" if j is not None else ""))
    else:
        notes.append(f"{rule}: about equal, the page's starting point")
    if cfg.scaling.strategy == "queue_delay" and cfg.workers.concurrency:
        delay = cfg.scaling.queue_delay
        j = _neighbour(outcomes, i, "scaling.queue_delay", 2.5)
        if delay > 3:
            notes.append(f"scaling.queue_delay {format_duration(delay)}: the page advises 2-3s (default 4s) to add "
                         f"workers sooner under load" + (f"; {_compare(outcomes, i, j)}" if j is not None else
                                                         "; try --grid scaling.queue_delay=2s,3s,4s"))
        else:
            notes.append(f"scaling.queue_delay {format_duration(delay)}: within the page's 2-3s advice")
    peak, top = o.peak_workers, cfg.workers.max
    wanted = max(2, math.ceil(peak * 1.2))
    if top == 1:
        notes.append("workers.max 1: the page advises against a single worker (no headroom, a bottleneck)")
    if o.queued_at_max:
        notes.append(f"workers.max {top} was reached and {o.queued_at_max} requests queued behind it: the page "
                     f"plans 20% headroom, so at least {max(wanted, math.ceil(top * 1.2))}")
    elif top < wanted:
        notes.append(f"peak {peak} workers: 20% headroom (the page's rule) means workers.max >= {wanted} "
                     f"(it is {top})")
    else:
        notes.append(f"peak {peak} workers of workers.max {top}: at least the page's 20% headroom")
    active = cfg.workers.active
    if active == 0 and o.hit_cold_start:
        j = _neighbour(outcomes, i, "workers.active", 1)
        rate = _active_rate(cfg)
        extra = (f"; one always-on worker costs about ${rate * duration:,.4f} over this trace "
                 f"({format_duration(duration)} at the active price)" if rate else "")
        notes.append(f"{o.hit_cold_start} of {o.requests} requests waited for a cold start: for latency-sensitive "
                     f"traffic the page advises workers.active >= 1"
                     + (f"; {_compare(outcomes, i, j)}" if j is not None else extra))
    elif active:
        notes.append(f"workers.active {active}: no cold start for the first {active} worker(s) (billed at the "
                     f"active price all the time)")
    if o.rejected_503:
        notes.append(f"{o.rejected_503} requests got 503 (no worker within timeouts.wait "
                     f"{format_duration(cfg.timeouts.wait)}): raise workers.max, workers.active or timeouts.wait")
    if o.rejected_429:
        notes.append(f"{o.rejected_429} requests got 429 (more than limits.max_queue {cfg.limits.max_queue} "
                     f"waiting): raise limits.max_queue or workers.max")
    if o.capped_starts:
        notes.append(f"cost.max_per_hour held back starts {o.capped_starts} time(s)")
    return notes


def _active_rate(cfg: Config) -> float:
    """The active price per second of one worker (0 when unpriced)."""
    tariff, default, _ = tariff_for(cfg)
    category = cfg.gpu.categories[0] if cfg.backend.type == "kubernetes" and cfg.gpu.categories else default
    rate = tariff.rate(category)
    return rate.active if rate is not None else 0.0


def advise(outcomes: Sequence[Outcome], configs: Sequence[Config], cold: float, duration: float,
           target_p99: float | None = None) -> Advice:
    """The front, the recommended setting and why, and the rules' notes for it."""
    front = pareto_front(outcomes)
    if len(outcomes) == 1:
        return Advice(front, None, "", tuple(_notes(outcomes, configs, 0, cold, duration)))
    fewest = min(outcomes[i].rejected + outcomes[i].timed_out_504 for i in front)
    candidates = [i for i in front if outcomes[i].rejected + outcomes[i].timed_out_504 == fewest]
    lost = "" if fewest == 0 else f" (every setting on the front lost requests; these lose the fewest: {fewest})"
    if target_p99 is not None:
        meeting = [i for i in candidates if outcomes[i].wait(99) <= target_p99]
        if meeting:
            chosen = min(meeting, key=lambda i: (_cost(outcomes[i]), i))
            why = (f"the cheapest setting on the front whose p99 wait ({outcomes[chosen].wait(99):.2f}s) meets the "
                   f"target of {target_p99:g}s{lost}")
        else:
            chosen = min(candidates, key=lambda i: (outcomes[i].wait(99), i))
            why = (f"no setting meets the p99 target of {target_p99:g}s; this one waits least "
                   f"({outcomes[chosen].wait(99):.2f}s){lost}")
    else:
        costs = [_cost(outcomes[i]) for i in candidates]
        waits = [outcomes[i].wait(99) for i in candidates]
        c0, c1, w0, w1 = min(costs), max(costs), min(waits), max(waits)

        def distance(i: int) -> float:  # to the ideal corner (cheapest cost, shortest wait), each axis 0..1
            c = (_cost(outcomes[i]) - c0) / (c1 - c0) if c1 > c0 else 0.0
            w = (outcomes[i].wait(99) - w0) / (w1 - w0) if w1 > w0 else 0.0
            return math.hypot(c, w)

        chosen = min(candidates, key=lambda i: (distance(i), _cost(outcomes[i]), i))
        cheapest = min(candidates, key=lambda i: (_cost(outcomes[i]), i))
        fastest = min(candidates, key=lambda i: (outcomes[i].wait(99), i))
        if len(candidates) == 1:
            why = f"alone on the front: no other setting costs less or waits less at p99{lost}"
        else:
            why = (f"the balance of the front (nearest the corner of its lowest cost {money(outcomes[cheapest])} "
                   f"and lowest p99 wait {outcomes[fastest].wait(99):.2f}s){lost}; pass --target-p99 SECONDS "
                   f"to choose the cheapest setting that meets a latency target instead")
    return Advice(front, chosen, why, tuple(_notes(outcomes, configs, chosen, cold, duration)))


def labels(settings: Mapping[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "(the config as it is)"
