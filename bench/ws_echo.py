"""The WebSocket echo scenario: messages/s through each proxy, N sessions each with one message in flight.

One stack: lbproxy with the picows echo worker (``bench/ws_echo_worker.py``), the peers proxying to that same
worker on ``/ws`` (nginx with ``Upgrade``/``Connection "upgrade"``, HAProxy and Caddy upgrade by themselves).
The load generator (``bench/ws_load.py``) runs on its own core and must not be the limit: each run records how
busy each core was, and the direct column (the fastest) says how much room the generator's core had left.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import stacks
from harness import Harness, log
from procs import LOOPBACK
from report import Metric

WS_LOAD = Path(__file__).resolve().parent / "ws_load.py"
MARK = "WSLOAD_JSON "


def _parse(out: str) -> dict[str, Any]:
    for line in out.splitlines():
        if line.startswith(MARK):
            result: dict[str, Any] = json.loads(line[len(MARK):])
            return result
    raise RuntimeError(f"ws_load.py printed no result line; its output was:\n{out[-2000:]}")


def run(h: Harness) -> None:
    a = h.args
    size, sessions = a.ws_message_bytes, a.ws_sessions
    shown = f"{size // 1024} KiB" if size % 1024 == 0 else f"{size:,} B"
    m = Metric("ws_echo.mps", f"WebSocket echo, {shown} messages, {sessions} sessions", "msg/s", "higher")
    worker = stacks.ws_echo_worker()
    stack = h.start_stack("ws-echo", worker)
    runs = []
    try:
        servers = stack.server_pids()
        for rep in range(1, a.repeat + 1):
            for column, port, _ in stack.targets():
                def load(seconds: float, url: str = f"ws://{LOOPBACK}:{port}{worker.paths['ws']}") -> dict[str, Any]:
                    cmd = [sys.executable, str(WS_LOAD), "--url", url, "--sessions", str(sessions), "--size",
                           str(size), "--duration", f"{seconds:g}"]
                    return h.run_load(cmd, _parse, seconds, servers)

                if rep == 1 and a.warmup:
                    load(a.warmup)
                r, attempts, disturbed = h.measured(f"ws_echo    {column:<7} {rep}/{a.repeat}",
                                                    lambda load=load: load(a.duration), servers)
                runs.append({"repetition": rep, "column": column, "attempts": attempts, "disturbed": disturbed, **r})
                m.add(column, r["mps"])
                if r["errors"] or r["opened"] < sessions:
                    m.notes.append(f"{column}, repetition {rep}: {r['opened']} of {sessions} sessions opened, "
                                   f"{r['errors']} errors {r['error_detail']}")
                if disturbed:
                    m.notes.append(h.disturbed_note(column, rep, r))
                busy = r["core_busy"]
                log(f"  ws_echo    {column:<7} {rep}/{a.repeat}: {r['mps']:>9,.0f} msg/s  "
                    f"p50 {r['latency_ms']['p50']:.3f} ms  p99 {r['latency_ms']['p99']:.3f} ms  "
                    f"errors {r['errors']}  generator {r['client_cpu_share']:.0%} of its core, cores busy "
                    f"{'/'.join(f'{busy[c]:.0%}' for c in sorted(busy))}  other CPU {r['other_cpu_s']:.2f} s"
                    f"{'  DISTURBED' if disturbed else ''}")
    finally:
        h.stop_stack(stack)
    h.metrics.append(m)
    headroom = _headroom(h, runs)
    if headroom:
        m.notes.append(headroom)
    h.detail["ws_echo"] = {"worker": worker.name, "path": worker.paths["ws"], "sessions": sessions,
                           "message_bytes": size, "duration": a.duration, "headroom": headroom, "runs": runs}


def _headroom(h: Harness, runs: list[dict[str, Any]]) -> str:
    """Whether the generator kept up: how busy its core was at direct's rate (the fastest) and through the proxies.

    Sessions wait for their echo, so the two sides take turns and neither core reaches 100 %; a generator's core
    well under full means the server side set the rate. A core's busy share counts every process on it, so only
    the runs that others left alone say anything."""
    runs = [r for r in runs if not r["disturbed"]]
    if not h.pin:
        return ""
    if not any(r["column"] == "direct" for r in runs):
        return "headroom: not known (every direct run was disturbed by other processes)"
    gen, srv = str(h.procs.loadgen_cpu), str(h.procs.server_cpu)

    def median(column: str, key: str) -> float:
        values = [r["core_busy"][key] if key in (gen, srv) else r[key] for r in runs if r["column"] == column]
        return statistics.median(values) if values else 0.0

    proxied = sorted({r["column"] for r in runs} - {"direct"})
    busiest = max((median(c, gen) for c in proxied), default=0.0)
    direct = median("direct", gen)
    verdict = ("it had room at every column" if direct < 0.9 else
               "it was nearly full at direct's rate, so read direct as a floor; through the proxies it had room"
               if busiest < 0.9 else "it was nearly full: the rates may be the generator's")
    return (f"headroom: the load generator's core was {direct:.0%} busy at direct's rate (its own process "
            f"{median('direct', 'client_cpu_share'):.0%}, the rest loopback's kernel work; the worker's core "
            f"{median('direct', srv):.0%}), at most {busiest:.0%} through a proxy: {verdict}")
