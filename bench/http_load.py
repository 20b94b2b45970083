"""The HTTP load scenarios: small GETs at 64 connections and at one, 64 KiB and 1 MiB responses.

One stack for all of them; each repetition loads every column in turn (direct, the peers, lbproxy), the same
load generator on its own core, each run after the machine went quiet and again when others disturbed it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness import Harness, Stack, log
from procs import LOOPBACK, http_get
from report import Metric

SCENARIOS = ("throughput", "latency", "body_64k", "body_1m")
MB = 1e6

# scenario -> (response, connections or None for --connections, rows: (key, label, unit, better, extract))
Extract = Callable[[dict[str, Any]], float]
HTTP: dict[str, tuple[str, int | None, list[tuple[str, str, str, str, Extract]]]] = {
    "throughput": ("small", None, [
        ("throughput.rps", "small GET, {c} connections", "req/s", "higher", lambda r: r["rps"]),
    ]),
    "latency": ("small", 1, [
        ("latency.p50", "small GET, 1 connection, p50", "ms", "lower", lambda r: r["latency_ms"]["p50"]),
        ("latency.p99", "small GET, 1 connection, p99", "ms", "lower", lambda r: r["latency_ms"]["p99"]),
    ]),
    "body_64k": ("64k", None, [
        ("body_64k.mbps", "64 KiB responses, {c} connections", "MB/s", "higher", lambda r: r["bytes_per_s"] / MB),
    ]),
    "body_1m": ("1m", None, [
        ("body_1m.mbps", "1 MiB responses, {c} connections", "MB/s", "higher", lambda r: r["bytes_per_s"] / MB),
    ]),
}


def run(h: Harness, names: list[str]) -> None:
    stack = h.start_stack("http", h.worker)
    try:
        for name in names:
            _scenario(h, name, stack)
        code, body = http_get(f"http://{LOOPBACK}:{stack.lb.admin_port}/metrics")
        h.detail["lbproxy_requests_total"] = [
            line for line in body.decode().splitlines() if line.startswith("lbproxy_requests_total")
        ] if code == 200 else f"/metrics answered {code}"
    finally:
        h.stop_stack(stack)


def _scenario(h: Harness, name: str, stack: Stack) -> None:
    a = h.args
    response, conns, rows = HTTP[name]
    conns = conns or a.connections
    path = h.worker.paths[response]
    metrics = [(Metric(key, label.format(c=conns), unit, better), fn) for key, label, unit, better, fn in rows]
    servers = stack.server_pids()
    runs = []
    for rep in range(1, a.repeat + 1):
        for column, port, _ in stack.targets():
            url = f"http://{LOOPBACK}:{port}{path}"
            if rep == 1 and a.warmup:
                h.http_load(url, conns, a.warmup, servers)
            r, attempts, disturbed = h.measured(f"{name:<10} {column:<7} {rep}/{a.repeat}",
                                                lambda url=url: h.http_load(url, conns, a.duration, servers),
                                                servers)
            runs.append({"repetition": rep, "column": column, "attempts": attempts, "disturbed": disturbed, **r})
            for m, fn in metrics:
                m.add(column, fn(r))
                if r["errors"]:
                    m.notes.append(f"{column}, repetition {rep}: {r['errors']} errors {r['error_detail']}")
                if disturbed:
                    m.notes.append(h.disturbed_note(column, rep, r))
            log(f"  {name:<10} {column:<7} {rep}/{a.repeat}: {r['rps']:>9,.0f} req/s "
                f"{r['bytes_per_s'] / MB:>8,.1f} MB/s  p50 {r['latency_ms']['p50']:.3f} ms  "
                f"p99 {r['latency_ms']['p99']:.3f} ms  errors {r['errors']}  "
                f"other CPU {r['other_cpu_s']:.2f} s{'  DISTURBED' if disturbed else ''}")
    h.metrics += [m for m, _ in metrics]
    h.detail[name] = {"path": path, "connections": conns, "duration": a.duration, "runs": runs}
