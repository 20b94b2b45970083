"""When the controller decides, and how it backs off after failed starts: pure rules of time.

The controller (``controller.py``) and the simulator (``lbproxy.simulate``) both follow them, so that a
simulated endpoint decides at the same instants as a real one.
"""

from __future__ import annotations

__all__ = ["BACKOFF_FIRST", "BACKOFF_MAX", "FAIL_FAST_AFTER", "MIN_RECHECK", "TICK", "fails_fast", "next_decision_in",
           "start_backoff"]

TICK = 1.0
MIN_RECHECK = 0.01  # a condition due "now" (float rounding) is looked at again this soon, never in a busy loop
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
# Failed starts in a row after which requests no ready worker can take fail at once (503 with the reason)
# during the back-off, instead of waiting timeouts.wait for a worker that keeps failing. One failure is
# retried with the requests still waiting: it may have been a fluke.
FAIL_FAST_AFTER = 2


def next_decision_in(recheck_after: float | None) -> float:
    """Seconds until the next decision when nothing changes: a tick, or sooner when the policy said when a
    condition may change (``Decision.recheck_after``). A change in the pool decides at once, whatever this says."""
    return TICK if recheck_after is None else min(TICK, max(recheck_after, MIN_RECHECK))


def start_backoff(failed_in_a_row: int) -> float:
    """Seconds before the next start after ``failed_in_a_row`` (>= 1) failed starts: 1, 2, 4 ... 60."""
    return float(min(BACKOFF_FIRST * 2 ** min(max(failed_in_a_row - 1, 0), 16), BACKOFF_MAX))


def fails_fast(failed_in_a_row: int, now: float, blocked_until: float) -> bool:
    """Whether requests no ready worker can take get their 503 at once (see FAIL_FAST_AFTER)."""
    return failed_in_a_row >= FAIL_FAST_AFTER and now < blocked_until
