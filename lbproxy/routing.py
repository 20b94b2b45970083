"""Which ready worker takes the next request: a pure choice over a snapshot of ready workers."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar


class Routable(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def in_flight(self) -> int: ...


W = TypeVar("W", bound=Routable)

STRICT = "strict"
COLD_STARTS_KEPT = 8  # recent cold-start durations: the longest is the expected start time (see burst_share)


def parse_affinity(value: str | None) -> tuple[str | None, bool]:
    """The client's ``X-Lbproxy-Worker-Id``: ``ID`` prefers that worker (soft affinity), ``strict ID`` takes
    that worker or none. Returns (worker id or None, strict)."""
    if not value:
        return None, False
    value = value.strip()
    head, _, rest = value.partition(" ")
    if head.lower() == STRICT and rest.strip():
        return rest.strip(), True
    return value or None, False

# Above this many candidates, sample two at random and take the less loaded ("power of two choices"):
# O(1) per request and within a small factor of the best choice, where a full scan would be O(n).
_SCAN_LIMIT = 16


def choose_worker(
    ready: Sequence[W],
    concurrency: int,
    preferred: str | None = None,
    rand: Callable[[int], int] = random.randrange,
) -> W | None:
    """Return the ready worker with a free slot and the fewest in-flight requests, or None.

    ``concurrency`` 0 means unlimited. ``preferred`` (the client's ``X-Lbproxy-Worker-Id``) wins when that
    worker has a free slot: soft affinity. Ties break at random (``rand(n)`` returns 0..n-1) so that equal
    workers share load instead of the first one taking everything.
    """
    if preferred is not None:
        for w in ready:
            if w.id == preferred:
                if concurrency == 0 or w.in_flight < concurrency:
                    return w
                break
    n = len(ready)
    if n == 0:
        return None
    if n > _SCAN_LIMIT:
        a, b = ready[rand(n)], ready[rand(n)]
        best = a if a.in_flight <= b.in_flight else b
        if concurrency == 0 or best.in_flight < concurrency:
            return best
        # Both samples full: fall through to the exact scan rather than queue a request a free worker could take.
    best_load = -1
    best_w: W | None = None
    ties = 0
    for w in ready:
        load = w.in_flight
        if concurrency and load >= concurrency:
            continue
        if best_w is None or load < best_load:
            best_w, best_load, ties = w, load, 1
        elif load == best_load:
            ties += 1
            if rand(ties) == 0:  # reservoir sampling: each tied worker is kept with probability 1/ties
                best_w = w
    return best_w


def burst_share(
    concurrency: int,
    ready: int,
    demand: int,
    starting_since: Iterable[float],
    now: float,
    expected_cold_start: float | None,
) -> tuple[int, float | None]:
    """Slots per ready worker for one dispatch during a cold start (requests queued while no worker was ready,
    until the queue is empty again), and when to dispatch again (None: no need).

    ``concurrency`` (0: unlimited), or less while other workers started for the queue are still starting: each
    ready worker takes its fair share of ``demand`` (queued, plus in flight on the ``ready`` workers), so that
    the first worker ready does not take the whole burst while the others, paid for too, get none. A starting
    worker (its start time in ``starting_since``) counts while it is expected soon: for up to twice the longest
    recent cold start (plus 1 s). One that takes longer (stuck, unschedulable) holds nobody back; the time
    returned is when the first of them stops counting.
    """
    horizon = 2 * (expected_cold_start or 0.0) + 1.0
    soon = [since + horizon for since in starting_since if now - since < horizon]
    if not soon:
        return concurrency, None
    share = max(1, math.ceil(demand / (ready + len(soon))))
    return (share if concurrency == 0 else min(concurrency, share)), min(soon)
