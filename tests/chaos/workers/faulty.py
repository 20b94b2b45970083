"""A stdlib-only test worker whose faults the chaos tests switch on from outside, per worker.

Environment (besides PORT and LBPROXY_WORKER_ID from lbproxy):
    CHAOS_DIR        a directory the test controls. While ``CHAOS_DIR/hang-<worker id>`` exists, every new
                     request (``/ping`` included) is accepted and never answered: a hung worker.
    POST /die        a slowly dying process (a big GPU worker's exit takes seconds): every open connection is
                     reset now, every new one is accepted and reset, and the process exits 2 s later.
    CHAOS_CHILD=1    at start, fork a child into the worker's process group that ignores SIGTERM and
                     sleeps; its pid goes to ``CHAOS_DIR/child-<worker id>`` (orphan checks).
    CHAOS_FIRST_NEVER_READY=1
                     the first worker started (the one that creates ``CHAOS_DIR/never-ready``) answers
                     ``/ping`` with 503 forever; the others are fine.

Routes: ``GET /ping`` 200; ``GET /stats`` ``{"inflight", "requests", "abandoned"}`` (app requests in flight
now, in total, and ended because the peer closed the connection); ``GET /sleep?s=F`` sleeps F seconds;
``GET /stream?n=N&interval=F`` N chunked lines; anything else (its body read whole) answers at once. Answers
are JSON ``{"worker": id, "target": request target}`` with ``Connection: close``. Unlike the echo worker, a
request whose connection the proxy closes ends at once: ``inflight`` shows whether upstream was cancelled.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
from urllib.parse import parse_qs, urlsplit

WORKER_ID = os.environ.get("LBPROXY_WORKER_ID", str(os.getpid()))
CHAOS_DIR = os.environ.get("CHAOS_DIR", "")


def _claim_never_ready() -> bool:
    if os.environ.get("CHAOS_FIRST_NEVER_READY") != "1":
        return False
    try:
        os.mkdir(os.path.join(CHAOS_DIR, "never-ready"))
    except FileExistsError:
        return False
    return True


NEVER_READY = _claim_never_ready()


def hanging() -> bool:
    return bool(CHAOS_DIR) and os.path.exists(os.path.join(CHAOS_DIR, f"hang-{WORKER_ID}"))


DYING = asyncio.Event()
OPEN: set[asyncio.StreamWriter] = set()


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:  # SO_LINGER 0: close() sends RST, as a killed process's sockets do
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _die() -> None:
    DYING.set()
    for w in list(OPEN):
        _reset(w)
    await asyncio.sleep(2)
    os._exit(9)


class Stats:
    inflight = requests = abandoned = 0


def _json(writer: asyncio.StreamWriter, data: object, status: int = 200) -> None:
    body = json.dumps(data).encode()
    reason = b"OK" if status == 200 else b"Service Unavailable"
    writer.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nConnection: close\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (status, reason, len(body), body))


async def _until_peer_closes(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def _stream(writer: asyncio.StreamWriter, n: int, interval: float) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    for i in range(n):
        line = f"chunk-{i}\n".encode()
        writer.write(b"%x\r\n%s\r\n" % (len(line), line))
        await writer.drain()
        await asyncio.sleep(interval)
    writer.write(b"0\r\n\r\n")


async def _app(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str, length: int) -> None:
    if length:
        await reader.readexactly(length)
    url = urlsplit(target)
    query = parse_qs(url.query)
    if url.path in ("/sleep", "/stream"):
        work = asyncio.ensure_future(
            asyncio.sleep(float(query.get("s", ["0"])[0])) if url.path == "/sleep" else
            _stream(writer, int(query.get("n", ["5"])[0]), float(query.get("interval", ["0.1"])[0])))
        gone = asyncio.ensure_future(_until_peer_closes(reader))
        done, _ = await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
        work.cancel()
        gone.cancel()
        if work not in done:
            raise ConnectionResetError("the peer closed the connection")
        work.result()  # a write to a closed peer raises here
        if url.path == "/stream":
            return
    _json(writer, {"worker": WORKER_ID, "target": target})


async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    counted = False
    if DYING.is_set():
        _reset(writer)
        return
    OPEN.add(writer)
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        if hanging():
            await reader.read()  # hold the connection until the peer gives up; never answer
            return
        lines = head.decode("latin-1").split("\r\n")
        target = lines[0].split(" ")[1]
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        if target == "/die":
            asyncio.get_running_loop().create_task(_die())
            return
        if target == "/stats":
            _json(writer, {"inflight": Stats.inflight, "requests": Stats.requests, "abandoned": Stats.abandoned})
        elif target != "/ping":
            counted = True
            Stats.inflight += 1
            Stats.requests += 1
            await _app(reader, writer, target, length)
        else:
            _json(writer, {"worker": WORKER_ID, "target": target}, 503 if NEVER_READY else 200)
        await writer.drain()
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
        if counted:
            Stats.abandoned += 1
    finally:
        if counted:
            Stats.inflight -= 1
        OPEN.discard(writer)
        if not DYING.is_set():
            writer.close()


def spawn_child() -> None:
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(600)\n"
    child = subprocess.Popen([sys.executable, "-c", code])  # same process group as this worker
    with open(os.path.join(CHAOS_DIR, f"child-{WORKER_ID}"), "w") as f:
        f.write(str(child.pid))


async def main() -> None:
    if os.environ.get("CHAOS_CHILD") == "1":
        spawn_child()
    server = await asyncio.start_server(serve_one, "127.0.0.1", int(os.environ["PORT"]))
    print(f"faulty worker {WORKER_ID} listening", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
