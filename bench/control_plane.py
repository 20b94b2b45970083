"""The scenarios of lbproxy alone: scale from zero (a request waits for a cold worker) and the controller's
decision time with 1,000 workers."""

from __future__ import annotations

import asyncio
import json
import time

import stacks
import tick as tick_timing
from harness import Harness, log
from procs import LOOPBACK
from report import Metric


async def _first_byte(port: int, path: str) -> tuple[float, float, int]:
    """Send one request; (wall time sent, wall time of the response's first byte, status)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        sent = time.time()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        first_byte = await reader.readexactly(1)
        first = time.time()
        head = first_byte + await reader.readuntil(b"\r\n\r\n")
        return sent, first, int(head[9:12])
    finally:
        writer.close()


def cold_start(h: Harness) -> None:
    m = Metric("cold_start.ms", "scale-from-zero, /ping 200 -> first byte", "ms", "lower")
    runs = []
    reps = h.args.repeat if h.args.quick else max(h.args.repeat, 5)
    for rep in range(1, reps + 1):
        ready_file = h.tmp / f"cold-{rep}.json"
        worker = stacks.cold_worker(ready_file, h.args.cold_delay)
        lb = stacks.start_lbproxy(h.procs, h.tmp, f"lbproxy-cold-{rep}", worker, active=0)
        try:
            sent, first, status = asyncio.run(asyncio.wait_for(_first_byte(lb.port, worker.paths["small"]), 60.0))
            ready = json.loads(ready_file.read_text())
            h.procs.seen.update(w["pid"] for w in lb.status()["workers"] if w.get("pid"))
        finally:
            h.stop_lbproxy(lb)
        value = (first - ready["ready_at"]) * 1000
        m.add("lbproxy", value)
        if status != 200:
            m.notes.append(f"repetition {rep}: status {status}")
        runs.append({"repetition": rep, "status": status, "ping_200_to_first_byte_ms": value,
                     "probe_lag_ms": (ready["first_200_at"] - ready["ready_at"]) * 1000,
                     "first_200_to_first_byte_ms": (first - ready["first_200_at"]) * 1000,
                     "request_to_first_byte_ms": (first - sent) * 1000})
        log(f"  cold_start lbproxy {rep}/{reps}: /ping 200 -> first byte {value:.1f} ms "
            f"(request -> first byte {(first - sent) * 1000:.0f} ms, status {status})")
    h.metrics.append(m)
    h.detail["cold_start"] = {"worker_ready_delay_s": h.args.cold_delay, "runs": runs}


def tick(h: Harness) -> None:
    decide = Metric("tick.ms", "controller: decide(), 1,000 workers", "ms", "lower")
    whole = Metric("tick.pool_ms", "controller: pool.snapshot() + decide()", "ms", "lower")
    runs = []
    for rep in range(1, h.args.repeat + 1):
        r = tick_timing.measure(1000, 50 if h.args.quick else 500)
        decide.add("lbproxy", r["decide"]["median_ms"])
        if "median_ms" in r["snapshot_and_decide"]:
            whole.add("lbproxy", r["snapshot_and_decide"]["median_ms"])
        runs.append(r)
        log(f"  tick       lbproxy {rep}/{h.args.repeat}: decide {r['decide']['median_ms']:.3f} ms")
    h.metrics += [decide] + ([whole] if whole.values else [])
    h.detail["tick"] = {"runs": runs}
