"""WebSocket echo load: N sessions, each sending one message and waiting for its echo before sending the next.

Prints one line ``WSLOAD_JSON {...}``: messages echoed in the window, messages/s, round-trip percentiles,
errors, and the share of its own core this generator used (``client_cpu_share``: near 1.0 means the generator,
not the server, was the limit).

It must outrun the fastest column (direct), so it is built on picows (Cython frame parsing and masking, a
fresh mask per frame as RFC 6455 asks) on uvloop when installed: per message one ``send`` and one
``on_ws_frame``, and every echo compared byte for byte with what was sent.

    python bench/ws_load.py --port 8080 --path /ws --sessions 64 --size 1024 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time
from typing import Any

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

MARK = "WSLOAD_JSON "


class Run:
    """What every session shares: the counting window and the counts."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.counting = False
        self.stopping = False
        self.messages = 0
        self.rtts: list[float] = []
        self.error_detail: dict[str, int] = {}

    def error(self, what: str) -> None:
        self.error_detail[what] = self.error_detail.get(what, 0) + 1


class Session(WSListener):
    """Send, wait for the echo, send again, until the run stops."""

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run
        self.transport: WSTransport | None = None
        self.sent_at = 0.0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def start(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter()
        self.transport.send(WSMsgType.TEXT, self.run.payload)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        run = self.run
        if frame.msg_type == WSMsgType.CLOSE:
            if not run.stopping:
                run.error(f"closed by the server ({frame.get_close_code()})")
            transport.disconnect()
            return
        if run.stopping:
            return
        if frame.msg_type != WSMsgType.TEXT or not frame.fin or frame.get_payload_as_memoryview() != run.payload:
            run.error("unexpected echo")
        elif run.counting:
            run.messages += 1
            run.rtts.append(time.perf_counter() - self.sent_at)
        self.start()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.run.stopping:
            self.run.error("disconnected")


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


async def load(url: str, sessions: int, size: int, duration: float, handshake_timeout: float) -> dict[str, Any]:
    run = Run((b"0123456789abcdef" * (size // 16 + 1))[:size])

    async def open_one() -> tuple[WSTransport, Session]:
        transport, session = await ws_connect(lambda: Session(run), url, websocket_handshake_timeout=handshake_timeout,
                                               enable_auto_pong=False)
        return transport, session

    opened = await asyncio.gather(*(open_one() for _ in range(sessions)), return_exceptions=True)
    live = [s for s in opened if not isinstance(s, BaseException)]
    for exc in opened:
        if isinstance(exc, BaseException):
            run.error(f"open: {type(exc).__name__}: {exc}"[:100])
    for _, session in live:
        session.start()
    await asyncio.sleep(min(0.2, duration / 10))  # every session under way before the window opens
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0, t0 = usage.ru_utime + usage.ru_stime, time.perf_counter()
    run.counting = True
    await asyncio.sleep(duration)
    run.counting = False
    seconds = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime - cpu0
    run.stopping = True
    for transport, _ in live:
        transport.send_close(WSCloseCode.OK)
    closed = 0
    for transport, _ in live:
        try:
            await asyncio.wait_for(transport.wait_disconnected(), 2.0)
            closed += 1
        except TimeoutError:
            transport.disconnect()
    ordered = sorted(run.rtts)
    return {
        "tool": "ws_load (picows)",
        "sessions": sessions,
        "opened": len(live),
        "message_bytes": size,
        "messages": run.messages,
        "seconds": seconds,
        "mps": run.messages / seconds,
        "errors": sum(run.error_detail.values()),
        "error_detail": run.error_detail,
        "closed_cleanly": closed,
        "client_cpu_share": cpu / seconds,
        "latency_ms": {"p50": _percentile(ordered, 0.5) * 1000, "p99": _percentile(ordered, 0.99) * 1000,
                       "max": (ordered[-1] if ordered else 0.0) * 1000},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="WebSocket echo load: N sessions, one message in flight each.")
    p.add_argument("--url", required=True, help="ws://127.0.0.1:PORT/PATH")
    p.add_argument("--sessions", type=int, default=64)
    p.add_argument("--size", type=int, default=1024, help="message payload in bytes")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--timeout", type=float, default=10.0)
    a = p.parse_args(argv)
    coro = load(a.url, a.sessions, a.size, a.duration, a.timeout)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
    else:
        result = uvloop.run(coro)
    print(MARK + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
