"""The controller's decision cost with 1,000 workers, in-process: ``lbproxy.policy.decide`` on a synthetic
snapshot, and (for the whole tick) ``WorkerPool.snapshot()`` of a pool holding the same workers + ``decide``.

The snapshot mixes every case the policy looks at: busy and idle ready workers (some past the idle timeout),
starting workers, unhealthy ones and a waiting queue, so that no branch is skipped.

    python bench/tick.py [--workers 1000] [--runs 500]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from lbproxy.policy import ScalingSettings, Snapshot, WorkerState, WorkerView, decide

NOW = 100_000.0


def settings(n: int) -> ScalingSettings:
    return ScalingSettings(active=n // 10, max=n + n // 5, concurrency=4, queue_delay=4.0, idle_timeout=5.0)


def _worker(i: int) -> tuple[WorkerState, int, float, float | None]:
    """(state, in flight, since, idle since) of the i-th synthetic worker."""
    kind = i % 10
    if kind < 6:
        return WorkerState.READY, 1 + i % 4, NOW - 60, None
    if kind < 8:
        return WorkerState.READY, 0, NOW - 60, NOW - (i % 9)  # idle, about half past timeouts.idle
    if kind == 8:
        return WorkerState.STARTING, 0, NOW - (i % 30), None
    return WorkerState.UNHEALTHY, i % 2, NOW - (i % 20), None


def snapshot(n: int) -> Snapshot:
    workers = tuple(WorkerView(f"w-{i}", *_worker(i)) for i in range(n))
    return Snapshot(now=NOW, workers=workers, queued=50, oldest_queued_at=NOW - 5.0)


def _time(fn: Any, runs: int) -> list[float]:
    # Warm up for a while, not once: on this VM the first few hundred calls in a fresh process run ~2x slower.
    clock = time.perf_counter_ns
    warm_until = clock() + 300_000_000
    while clock() < warm_until:
        fn()
    out = []
    for _ in range(runs):
        started = clock()
        fn()
        out.append((clock() - started) / 1e6)
    return out


def _summary(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "median_ms": statistics.median(ordered),
        "p99_ms": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "min_ms": ordered[0],
        "max_ms": ordered[-1],
    }


def _pool_tick(n: int, cfg: ScalingSettings, runs: int) -> dict[str, Any]:
    """``pool.snapshot()`` + ``decide()``, what one controller tick computes, on a real ``WorkerPool``."""
    from lbproxy.pool import WorkerPool  # the pool imports asyncio; only its plain methods are used here

    pool = WorkerPool(concurrency=4, max_queue=1000, wait_timeout=60.0, clock=lambda: NOW)
    for i in range(n):
        state, in_flight, _since, _idle = _worker(i)
        w = pool.add(f"w-{i}", "127.0.0.1", 10_000 + i, 10_000 + i)
        if state is not WorkerState.STARTING:
            pool.set_state(w, state)
        w.in_flight = in_flight
    return _summary(_time(lambda: decide(pool.snapshot(), cfg), runs))


def measure(n: int = 1000, runs: int = 500) -> dict[str, Any]:
    cfg = settings(n)
    snap = snapshot(n)
    decision = decide(snap, cfg)
    result: dict[str, Any] = {
        "workers": n,
        "runs": runs,
        "decide": _summary(_time(lambda: decide(snap, cfg), runs)),
        "decision": {"desired": decision.desired, "start": decision.start, "drain": len(decision.drain),
                     "stop": len(decision.stop)},
    }
    try:
        result["snapshot_and_decide"] = _pool_tick(n, cfg, runs)
    except Exception as exc:  # the pool's API is not the benchmark's to freeze: report, do not fail
        result["snapshot_and_decide"] = {"error": f"{type(exc).__name__}: {exc}"}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time lbproxy.policy.decide over a synthetic pool.")
    parser.add_argument("--workers", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.workers, args.runs), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
