"""Load generation: wrk when it is installed, else a small asyncio HTTP/1.1 keep-alive client (this file).

Both run as a separate process pinned to the load generator's core and report the same shape::

    {"tool", "requests", "seconds", "rps", "bytes_per_s", "errors", "latency_ms": {"p50", "p90", "p99", "max"}}

``bytes_per_s`` counts what the client read, headers included (as wrk's Transfer/sec does).

Run alone (the Python generator)::

    python bench/loadgen.py --url http://127.0.0.1:8080/small --connections 64 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
WRK_LUA = HERE / "wrk_report.lua"
MARK = "LOADGEN_JSON "
WRK_MARK = "WRK_JSON "


def wrk_path() -> str | None:
    return shutil.which("wrk")


def load_command(tool: str, url: str, connections: int, duration: float, timeout: float = 10.0) -> list[str]:
    """The argv of one load run with ``tool`` ("wrk" or "python")."""
    if tool == "wrk":
        wrk = wrk_path() or "wrk"
        # wrk takes whole seconds; one thread, since it has one core to itself.
        return [wrk, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", f"--timeout={timeout:g}s",
                "--latency", "-s", str(WRK_LUA), url]
    return [sys.executable, str(Path(__file__).resolve()), "--url", url, "--connections", str(connections),
            "--duration", f"{duration:g}", "--timeout", f"{timeout:g}"]


def parse_output(tool: str, stdout: str) -> dict[str, Any]:
    """The result line of a load run, in the common shape."""
    for line in stdout.splitlines():
        if tool == "wrk" and line.startswith(WRK_MARK):
            raw = json.loads(line[len(WRK_MARK):])
            seconds = raw["duration_us"] / 1e6
            lat = raw["latency_us"]
            return {
                "tool": "wrk",
                "requests": raw["requests"],
                "seconds": seconds,
                "rps": raw["requests"] / seconds if seconds else 0.0,
                "bytes_per_s": raw["bytes"] / seconds if seconds else 0.0,
                "errors": sum(raw["errors"].values()),
                "error_detail": raw["errors"],
                "latency_ms": {k: lat[k] / 1000 for k in ("p50", "p90", "p99", "max")},
            }
        if tool == "python" and line.startswith(MARK):
            result: dict[str, Any] = json.loads(line[len(MARK):])
            return result
    raise RuntimeError(f"{tool} printed no result line; its output was:\n{stdout[-2000:]}")


# -- the Python load generator ---------------------------------------------------------------------


class _Stats:
    __slots__ = ("bytes", "errors", "latencies", "non2xx")

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.bytes = 0
        self.errors = 0
        self.non2xx = 0


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int, bool]:
    """Read one response; returns (status, bytes read, whether the server closes the connection)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    size = len(head)
    close = b"\r\nconnection: close" in lower
    if b"\r\ntransfer-encoding: chunked" in lower:
        while True:
            line = await reader.readuntil(b"\r\n")
            n = int(line.split(b";", 1)[0], 16)
            size += len(line) + n + 2
            await reader.readexactly(n + 2)
            if n == 0:
                break
    else:
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            end = lower.index(b"\r\n", at + 2)
            n = int(lower[at + 17:end])
            await reader.readexactly(n)
            size += n
        elif status not in (204, 304) and not 100 <= status < 200:
            size += len(await reader.read())  # delimited by close
            close = True
    return status, size, close


async def _client(host: str, port: int, request: bytes, deadline: float, request_timeout: float, stats: _Stats) -> None:
    writer: asyncio.StreamWriter | None = None
    clock = time.perf_counter
    while time.monotonic() < deadline:
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), request_timeout)
            started = clock()
            writer.write(request)
            status, size, close = await asyncio.wait_for(_read_response(reader), request_timeout)
            stats.latencies.append(clock() - started)
            stats.bytes += size
            if not 200 <= status < 400:
                stats.non2xx += 1
            if close:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            stats.errors += 1
            if writer is not None:
                writer.close()
                writer = None
            await asyncio.sleep(0.01)
    if writer is not None:
        writer.close()


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def generate(url: str, connections: int, duration: float, request_timeout: float) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    request = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    stats = _Stats()
    started = time.monotonic()
    deadline = started + duration
    await asyncio.gather(*(_client(host, port, request, deadline, request_timeout, stats) for _ in range(connections)))
    seconds = time.monotonic() - started
    ordered = sorted(stats.latencies)
    return {
        "tool": "python",
        "requests": len(ordered),
        "seconds": seconds,
        "rps": len(ordered) / seconds,
        "bytes_per_s": stats.bytes / seconds,
        "errors": stats.errors + stats.non2xx,
        "error_detail": {"io": stats.errors, "status": stats.non2xx},
        "latency_ms": {
            "p50": _percentile(ordered, 0.50) * 1000,
            "p90": _percentile(ordered, 0.90) * 1000,
            "p99": _percentile(ordered, 0.99) * 1000,
            "max": (ordered[-1] if ordered else 0.0) * 1000,
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A small HTTP/1.1 keep-alive load generator (wrk's fallback).")
    parser.add_argument("--url", required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    result = asyncio.run(generate(args.url, args.connections, args.duration, args.timeout))
    print(MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
