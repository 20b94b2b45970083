"""Scale churn: 0 -> max -> 0 several times under a stream of requests loses nothing."""

from __future__ import annotations

import asyncio
import time

import pytest

from ..conftest import pid_alive, until

CYCLES = 3
MAX = 3


@pytest.mark.slow
async def test_scale_churn_answers_every_request_and_never_routes_to_a_draining_worker(start_endpoint, client):
    # ECHO_SHUTDOWN_TIMEOUT=0: a worker stopped under a request drops it, so a too-early stop shows as a 502.
    ep = await start_endpoint(
        workers={"active": 0, "max": MAX, "concurrency": 1},
        scaling={"queue_delay": "0s"},
        timeouts={"idle": "0.5s", "wait": "20s"},
        worker={"env": {"ECHO_SHUTDOWN_TIMEOUT": "0"}, "stop_grace": "2s"},
    )
    results: list[tuple[float, int, str]] = []  # (sent at, status, worker id)
    first_seen_leaving: dict[str, float] = {}  # worker id -> when /status first showed it draining/stopping
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            ws = await ep.workers()
            peak = max(peak, len(ws))
            now = time.monotonic()
            for w in ws:
                if w["state"] in ("draining", "stopping"):
                    first_seen_leaving.setdefault(w["id"], now)
            await asyncio.sleep(0.01)

    async def call(path: str) -> None:
        sent = time.monotonic()
        r = await client.get(ep.url + path)
        results.append((sent, r.status_code, r.headers.get("x-lbproxy-worker-id", "")))

    async def steady(duration: float, interval: float) -> None:
        """One request every ``interval`` (never waiting for answers) for ``duration`` seconds."""
        calls = []
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline and len(calls) < 200:
            calls.append(asyncio.create_task(call("/sleep?s=0.05")))
            await asyncio.sleep(interval)  # pacing the load, not synchronising
        await asyncio.gather(*calls)

    watcher = asyncio.create_task(watch())
    try:
        for _ in range(CYCLES):
            # Up: a burst needs MAX workers (concurrency 1), then a thin stream lets idle ones drain one by one
            # while requests keep arriving: the race between drain and dispatch.
            burst = [asyncio.create_task(call("/sleep?s=0.4")) for _ in range(3 * MAX)]
            await ep.wait_workers(lambda ws: len(ws) == MAX, "scale-up to workers.max", timeout=20)
            await asyncio.gather(*burst)
            await steady(duration=2.0, interval=0.15)
            await ep.wait_workers(lambda ws: ws == [], "scale-down to zero", timeout=20)
    finally:
        done.set()
        await watcher

    assert results and all(status == 200 for _, status, _ in results), [r for r in results if r[1] != 200]
    late = [(sent, wid) for sent, _, wid in results if wid in first_seen_leaving and sent > first_seen_leaving[wid]]
    assert not late, f"requests sent after their worker was seen draining: {late}"
    assert peak == MAX
    assert ep.log().count("scale down: draining worker") >= CYCLES * MAX
    await until(lambda: not any(pid_alive(p) for p in ep.seen_pids), 10, "every stopped worker to exit")
