"""Open N connections to a server and hold them open, so that the bench can read the server's memory.

``--kind idle``: keep-alive clients that made one request (the server has set up their connection state)
and then sit idle. ``--kind ws``: WebSocket sessions that exchanged one message (so that a proxy has bridged
both sides) and then sit idle. The handshake and the frame are written by hand: the client must stay much
lighter than the server it measures, and 10,000 aiohttp client sessions would not.

Prints one line ``HOLD_JSON {"opened": n, "failed": k, "nofile": [soft, hard], "errors": {...}}`` once every
connection is open (or failed), then holds them until its stdin closes, then closes them and exits.

    python bench/hold.py --port 8080 --kind ws --count 10000 --path /ws
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import sys
from collections import Counter

MARK = "HOLD_JSON "
OPEN_AT_ONCE = 100  # handshakes in flight; a Python server's accept backlog is 128 by default


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    return int(head[9:12]), head.lower()


async def _open_idle(host: str, port: int, path: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    status, head = await _read_head(reader)
    if status != 200:
        raise RuntimeError(f"status {status}")
    at = head.find(b"\r\ncontent-length:")
    if at >= 0:
        await reader.readexactly(int(head[at + 17:head.index(b"\r\n", at + 2)]))
    elif b"\r\ntransfer-encoding: chunked" in head:
        await reader.readuntil(b"\r\n0\r\n\r\n")
    if b"\r\nconnection: close" in head:
        raise RuntimeError("the server closed the keep-alive connection")
    return writer


def _text_frame(payload: bytes) -> bytes:
    """A masked client text frame (RFC 6455 5.2), payload under 126 bytes."""
    mask = os.urandom(4)
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _open_ws(host: str, port: int, path: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection(host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    status, _ = await _read_head(reader)
    if status != 101:
        raise RuntimeError(f"status {status}")
    writer.write(_text_frame(b"hello"))
    frame = await reader.readexactly(2 + len(b"hello"))
    if frame[2:] != b"hello":
        raise RuntimeError(f"unexpected echo {frame!r}")
    return writer


async def hold(host: str, port: int, kind: str, count: int, path: str, connect_timeout: float) -> int:
    opener = _open_ws if kind == "ws" else _open_idle
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    writers: list[asyncio.StreamWriter] = []
    errors: Counter[str] = Counter()

    async def one() -> None:
        async with gate:
            try:
                writers.append(await asyncio.wait_for(opener(host, port, path), connect_timeout))
            except (OSError, RuntimeError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    TimeoutError, ValueError) as exc:
                errors[f"{type(exc).__name__}: {exc}"[:120]] += 1

    await asyncio.gather(*(one() for _ in range(count)))
    report = {
        "opened": len(writers),
        "failed": count - len(writers),
        "nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "errors": dict(errors.most_common(5)),
    }
    print(MARK + json.dumps(report), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the bench closes stdin
    for w in writers:
        w.close()
    await asyncio.sleep(0.2)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Open N idle keep-alive or WebSocket connections and hold them.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--kind", choices=["idle", "ws"], required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return asyncio.run(hold(args.host, args.port, args.kind, args.count, args.path, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
