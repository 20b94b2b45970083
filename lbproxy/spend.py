"""The spend limit (`cost.max_per_hour`): how many of the workers the scaling policy wants may start.

A purely computational function of the committed hourly rate and the prices of the next workers; the
controller applies it to every decision, so scaling never brings the rate of all running workers above the
limit. Requests then wait in the queue (and get the usual 503 at `timeouts.wait`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .billing import Ledger

__all__ = ["SpendCheck", "starts_allowed", "starts_within_limit"]

_SLACK = 1e-9  # prices are floats: a rate exactly at the limit is within it


@dataclass(frozen=True, slots=True)
class SpendCheck:
    """How many starts the limit allows, and why not more (None: all of them)."""

    allowed: int
    capped: str | None = None


def starts_within_limit(
    wanted: int, committed_per_hour: float, next_per_hour: Sequence[float], limit_per_hour: float | None
) -> SpendCheck:
    """Allow the first starts whose prices (``next_per_hour[i]``: the i-th new worker's dollars per hour) keep
    ``committed_per_hour`` (every running or accepted worker) plus them at or below ``limit_per_hour``.

    Workers start in order, so one that does not fit stops the rest: a cheaper active-tier place is never
    taken by a later worker.
    """
    if limit_per_hour is None or wanted <= 0:
        return SpendCheck(max(wanted, 0))
    rate = committed_per_hour
    for i in range(wanted):
        price = next_per_hour[i] if i < len(next_per_hour) else (next_per_hour[-1] if next_per_hour else 0.0)
        if rate + price > limit_per_hour + _SLACK:
            why = (f"cost.max_per_hour: ${limit_per_hour:.2f}/h reached: workers run at ${rate:.2f}/h and one more "
                   f"costs ${price:.2f}/h; requests wait for a worker to free up")
            return SpendCheck(i, why)
        rate += price
    return SpendCheck(wanted)


def starts_allowed(ledger: Ledger, category: str, wanted: int, unbilled: int, limit_per_hour: float | None
                   ) -> SpendCheck:
    """How many of ``wanted`` new workers of ``category`` keep the hourly rate of ``ledger``'s open workers within
    the limit. ``unbilled``: workers accepted but not billed yet (pods not started, starts the backend has not
    reported); they count at the price they will have, and take the cheaper active-tier places first."""
    if limit_per_hour is None or wanted <= 0:
        return SpendCheck(max(wanted, 0))
    prices = [p * 3600 for p in ledger.next_prices(category, unbilled + wanted)]
    committed = ledger.rate_per_second() * 3600 + sum(prices[:unbilled])
    return starts_within_limit(wanted, committed, prices[unbilled:], limit_per_hour)
