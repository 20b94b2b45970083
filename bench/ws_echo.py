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
    m = Metric("ws_echo.mps", f"WebSocket echo, {size:,} B messages, {sessions} sessions", "msg/s", "higher")
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
                runs.append({"repetition": rep, "column": column, "attempts": attempts, **r})
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
    headroom = _headroom(h, [r for r in runs if r["column"] == "direct"])
    if headroom:
        m.notes.append(headroom)
    h.detail["ws_echo"] = {"worker": worker.name, "path": worker.paths["ws"], "sessions": sessions,
                           "message_bytes": size, "duration": a.duration, "headroom": headroom, "runs": runs}


def _headroom(h: Harness, direct: list[dict[str, Any]]) -> str:
    """Whether the generator kept up with the fastest column: how busy its core and the worker's were."""
    if not direct or not h.pin:
        return ""
    gen = statistics.median(r["core_busy"][str(h.procs.loadgen_cpu)] for r in direct)
    own = statistics.median(r["client_cpu_share"] for r in direct)
    srv = statistics.median(r["core_busy"][str(h.procs.server_cpu)] for r in direct)
    verdict = ("the worker's core, not the generator's, set the rate" if gen < 0.95 <= srv or gen < srv
               else "the generator's core may be the limit: read the direct column as a floor")
    return (f"headroom: at direct's rate the generator's core was {gen:.0%} busy (the generator's own process "
            f"{own:.0%}, the rest is loopback's kernel work), the worker's core {srv:.0%}: {verdict}")
