"""The memory scenarios: idle keep-alive clients and open WebSocket sessions, held by ``bench/hold.py``.

Each repetition starts fresh processes (freed memory stays mapped), then for each column opens the connections
from another process and reads the RSS of that column's server: the worker's process group for direct, the
peer's processes, lbproxy's process.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import stacks
from harness import Harness, Pids, log
from procs import open_fds, rss_kib, wait_fds
from report import Metric

HOLD = Path(__file__).resolve().parent / "hold.py"
MB = 1e6


def _hold(h: Harness, port: int, kind: str, count: int, path: str, pids: Pids | None) -> tuple[int | None,
                                                                                                  dict[str, Any]]:
    """Open ``count`` connections from another process; the RSS of ``pids`` (KiB) while they are open."""
    cmd = [sys.executable, str(HOLD), "--port", str(port), "--kind", kind, "--count", str(count), "--path", path]
    proc = h.procs.start(cmd, name="hold", cpu=h.procs.loadgen_cpu, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        deadline = time.monotonic() + 120 + count / 50
        line = b""
        while not line.startswith(b"HOLD_JSON "):
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            line = proc.stdout.readline() if ready else b""
            if not ready or (not line and proc.poll() is not None):
                raise RuntimeError(f"hold.py ({kind} x{count} on port {port}) gave no report; see {h.log_dir}")
        result: dict[str, Any] = json.loads(line[len(b"HOLD_JSON "):])
        rss = None
        if pids is not None:
            time.sleep(1.0)  # let the server settle (tasks scheduled, buffers allocated)
            rss = rss_kib(pids())
        proc.stdin.close()
        proc.wait(60)
    finally:
        h.procs.stop(proc)
    return rss, result


def run(h: Harness, name: str, kind: str, count: int, worker: stacks.WorkerKind, path: str) -> None:
    if kind == "ws":
        rss = Metric("websockets.rss", f"{count:,} open WebSockets, RSS", "MB", "lower")
        delta = Metric("websockets.delta", f"{count:,} open WebSockets, RSS over idle", "MB", "lower")
        shown = [rss, delta]
    else:
        rss = Metric("idle.rss", f"{count:,} idle keep-alive clients, RSS", "MB", "lower")
        delta = Metric("idle.delta", f"{count:,} idle keep-alive clients, RSS over idle", "MB", "lower")
        shown = [delta]
    runs = []
    for rep in range(1, h.args.repeat + 1):
        stack = h.start_stack(f"{name}-{rep}", worker)  # fresh processes: freed memory stays mapped
        try:
            for column, port, pids in stack.targets():
                _hold(h, port, kind, 10, path, None)  # warm-up: lazy set-up is not per-connection cost
                time.sleep(0.5)
                watched = sorted({*pids(), *stack.lb.worker_pids()})
                fds = open_fds(watched)
                before = rss_kib(pids())
                after, opened = _hold(h, port, kind, count, path, pids)
                assert after is not None
                # The next column must not find the worker still closing these (its descriptors are few).
                if not wait_fds(watched, fds + 200, 60.0):
                    h.notes.append(f"{name}, {column}: connections still not released after 60 s")
                rss.add(column, after * 1024 / MB)
                delta.add(column, (after - before) * 1024 / MB)
                if opened["failed"]:
                    for m in shown:
                        m.notes.append(f"{column}, repetition {rep}: {opened['failed']} of {count} "
                                       f"connections failed {opened['errors']}")
                runs.append({"repetition": rep, "column": column, "rss_before_kib": before,
                             "rss_after_kib": after, **opened})
                log(f"  {name:<10} {column:<7} {rep}/{h.args.repeat}: {opened['opened']:,} open, RSS "
                    f"{before / 1024:,.1f} -> {after / 1024:,.1f} MiB")
        finally:
            h.stop_stack(stack)
    h.metrics += shown
    h.detail[name] = {"kind": kind, "count": count, "worker": worker.name, "path": path, "runs": runs,
                      "rss_mb": rss.as_json()}


def extrapolate_websockets(h: Harness, measured: int, wanted: int) -> None:
    """RSS at ``wanted`` sessions, linear in the per-session cost measured at ``measured`` (close to it)."""
    rss, delta = (next(m for m in h.metrics if m.key == k) for k in ("websockets.rss", "websockets.delta"))
    if measured < 0.9 * wanted:
        h.full_scale["websockets"] = False
        return
    at = Metric("websockets.rss_at_target", f"{wanted:,} open WebSockets, RSS (extrapolated)", "MB", "lower")
    for column, values in rss.values.items():
        for total, grown in zip(values, delta.values[column], strict=True):
            at.add(column, total + grown * (wanted - measured) / measured)
    at.notes.append(f"linear extrapolation from {measured:,} sessions (RSS + growth x {wanted - measured:,} "
                    f"/ {measured:,})")
    h.metrics.insert(h.metrics.index(delta) + 1, at)
