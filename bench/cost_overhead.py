"""What cost accounting adds to the request path: a slot taken and given back on an idle worker (each request
then moves the worker busy -> idle, the meter's worst case), with and without the cost meter listening.

    .venv/bin/python bench/cost_overhead.py

Prints both timings (best of 5 runs of 100,000) and the ratio; no network, no asyncio loop needed.
"""

from __future__ import annotations

import time

from lbproxy.config import parse_config
from lbproxy.cost import CostMeter
from lbproxy.policy import WorkerState
from lbproxy.pool import WorkerPool

RUNS, N = 5, 100_000


def per_request(with_meter: bool) -> float:
    pool = WorkerPool(0, 10, 30.0)
    if with_meter:
        CostMeter(parse_config({"name": "bench", "cost": {"category": "24gb"}}, {}), pool, lambda wid: {})
    worker = pool.add("w", "127.0.0.1", 1, 1)
    pool.set_state(worker, WorkerState.READY)
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(N):
            pool.try_reserve().release()  # type: ignore[union-attr]
        best = min(best, (time.perf_counter() - start) / N)
    return best


def main() -> None:
    bare, metered = per_request(False), per_request(True)
    print(f"slot take + give back on an idle worker: {bare * 1e9:.0f} ns bare, {metered * 1e9:.0f} ns with the "
          f"cost meter (+{(metered - bare) * 1e9:.0f} ns per request, {metered / bare:.2f}x)")


if __name__ == "__main__":
    main()
