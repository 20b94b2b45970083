"""GPU category fallback: which worker pool takes the next worker, and when to move pending ones on. Pure.

The first category is used while it can place workers. A pool whose pod stays unschedulable for
``fallback_after`` is blocked for ``fallback_retry``; its stuck pods move to the next unblocked pool. When the
block ends, new workers try the earlier category again, and scale-down removes later-category workers first
(their rank), so the endpoint drifts back to its first choice as capacity frees up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PoolState:
    name: str
    rank: int
    unschedulable_since: tuple[float, ...] = ()  # one entry per pod of this pool stuck unschedulable


@dataclass(frozen=True, slots=True)
class Move:
    """Move ``count`` stuck workers from pool ``source`` to pool ``target`` (None: nowhere left to go)."""

    source: str
    target: str | None
    count: int


def choose_pool(pools: Sequence[PoolState], blocked_until: Mapping[str, float], now: float) -> str:
    """The pool for a new worker: the first choice that is not blocked, else the one unblocked soonest."""
    ordered = sorted(pools, key=lambda p: p.rank)
    for p in ordered:
        if blocked_until.get(p.name, 0.0) <= now:
            return p.name
    return min(ordered, key=lambda p: (blocked_until.get(p.name, 0.0), p.rank)).name


def moves(pools: Sequence[PoolState], blocked_until: Mapping[str, float], now: float,
          fallback_after: float) -> list[Move]:
    """Stuck pods to move now. The caller blocks each source pool and scales source down, target up."""
    ordered = sorted(pools, key=lambda p: p.rank)
    stuck = {p.name: sum(1 for since in p.unschedulable_since if now - since >= fallback_after) for p in ordered}
    out: list[Move] = []
    for i, p in enumerate(ordered):
        if not stuck[p.name]:
            continue
        # A pool that cannot place its own pods is no target, nor is one still blocked from an earlier move.
        target = next(
            (q.name for q in ordered[i + 1:] if not stuck[q.name] and blocked_until.get(q.name, 0.0) <= now),
            None,
        )
        out.append(Move(p.name, target, stuck[p.name]))
    return out
