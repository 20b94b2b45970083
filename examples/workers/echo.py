"""Echo worker: a tiny HTTP worker honouring the lbproxy worker contract (README "The worker contract").

Used by the tests and the examples to exercise every proxy feature. Only stdlib + aiohttp.

Contract: ``GET /ping`` answers 204 while the worker initialises, 200 once ready; any other status (or no
answer) means unhealthy. Every response carries ``X-Echo-Worker: <worker id>``.

Environment:
    PORT                    app port (required)
    PORT_HEALTH             port serving ``GET /ping`` (default: PORT). When it differs from PORT, /ping is
                            served only there and the app port answers 404 for /ping.
    HOST                    bind address (default 127.0.0.1)
    LBPROXY_WORKER_ID       worker id reported in X-Echo-Worker and bodies (default: the pid)
    ECHO_INIT_DELAY         seconds (float) of simulated model loading, /ping answers 204 meanwhile
                            (default 0)
    ECHO_NEVER_READY=1      /ping answers 204 forever
    ECHO_PING_STATUS_FILE   if set and the file exists with an int in it, /ping answers that status
                            (empty or unparsable content is ignored)
    ECHO_CRASH_AT_START=1   print a line to stderr and exit with code 3 at once
    ECHO_SHUTDOWN_TIMEOUT   seconds in-flight requests get to finish after SIGTERM/SIGINT (default 30)
    ECHO_LISTENER_CHILD     seconds a forked child (in its own session) holds the listening sockets open without
                            accepting: the port outlives a killed worker, as with a forked model loader (default 0)

Routes (app port):
    ANY  /echo, /echo/...   JSON: worker, pid, method, path, raw_path (request target as received, incl. the
                            query), query (str, or list when repeated), headers (as received, repeated ones
                            joined with ", "), body_len, body_sha256 (the body is read streamingly)
    ANY  /sleep?s=F         sleep s seconds, then {"slept": s, "worker": id} (s=3600: a hanging request)
    GET  /stream?n=&interval=&size=   chunked text/plain: n chunks of size bytes ("chunk-i...\\n"),
                            interval seconds apart (defaults 5, 0.1, 16)
    GET  /sse?n=&interval=  text/event-stream: n events "data: i\\n\\n", interval seconds apart
    GET  /bytes?n=N         N bytes of b"x" with Content-Length, written 64 KiB at a time
    GET  /status/{code}     that status with {"status": code} (no body for 204, 205, 304)
    GET  /headers?set=Name:Value&set=...  a response carrying those headers (hop-by-hop stripping tests)
    GET  /ws                WebSocket echo (subprotocols "chat", "superchat"): text and binary are echoed;
                            text "close:CODE" closes with CODE, "whoami" answers the worker id,
                            "protocol" the negotiated subprotocol ("" if none), "headers" the upgrade
                            request's headers as JSON
    POST /exit?code=N       os._exit(N) at once (default 1): a crash mid-request
    GET  /pid, /stats       {"worker", "pid", "ready", "inflight", "peak_inflight", "requests", "ws_close_codes"}:
                            app requests (open WebSockets included, /ping and /stats not) in flight now, at most,
                            in total; the close code of each WebSocket session that ended

SIGTERM/SIGINT: stop listening, close WebSockets (1001), let in-flight requests finish (up to
ECHO_SHUTDOWN_TIMEOUT), exit 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
import time

from aiohttp import WSMsgType, web
from aiohttp.typedefs import Handler

PID = os.getpid()
WORKER_ID = os.environ.get("LBPROXY_WORKER_ID") or str(PID)
WS_PROTOCOLS = ("chat", "superchat")
NO_BODY_STATUSES = {204, 205, 304}
WRITE_SIZE = 64 * 1024


class State:
    ready = False
    inflight = peak_inflight = requests = 0
    websockets: set[web.WebSocketResponse] = set()
    ws_close_codes: list[int] = []  # how each WebSocket session ended, as the worker saw it


def _num(request: web.Request, name: str, default: float) -> float:
    try:
        return float(request.query.get(name, default))
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be a number") from None


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _headers(request: web.Request) -> dict[str, str]:
    """Request headers as received (first spelling of each name kept), repeated ones joined with ', '."""
    out: dict[str, str] = {}
    spelling: dict[str, str] = {}
    for raw_name, raw_value in request.raw_headers:
        name, value = _decode(raw_name), _decode(raw_value)
        key = spelling.setdefault(name.lower(), name)
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _forced_ping_status() -> int | None:
    path = os.environ.get("ECHO_PING_STATUS_FILE")
    try:
        with open(path or "") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


async def ping(request: web.Request) -> web.Response:
    return web.Response(status=_forced_ping_status() or (200 if State.ready else 204))


async def echo(request: web.Request) -> web.Response:
    digest, size = hashlib.sha256(), 0
    async for chunk in request.content.iter_chunked(WRITE_SIZE):
        digest.update(chunk)
        size += len(chunk)
    query: dict[str, str | list[str]] = {}
    for key in dict.fromkeys(request.query):
        values = request.query.getall(key)
        query[key] = values[0] if len(values) == 1 else values
    return web.json_response(
        {
            "worker": WORKER_ID,
            "pid": PID,
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "query": query,
            "headers": _headers(request),
            "body_len": size,
            "body_sha256": digest.hexdigest(),
        }
    )


async def sleep(request: web.Request) -> web.Response:
    seconds = _num(request, "s", 0.0)
    await asyncio.sleep(seconds)
    return web.json_response({"slept": seconds, "worker": WORKER_ID})


def _chunk(i: int, size: int) -> bytes:
    label = f"chunk-{i}"
    if size > len(label):
        return (label.ljust(size - 1, ".") + "\n").encode()
    return (label + "\n").encode()[:size]


async def _drip(request: web.Request, ctype: str, parts: list[bytes], interval: float) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": ctype, "Cache-Control": "no-cache"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    for i, part in enumerate(parts):
        if i:
            await asyncio.sleep(interval)
        await resp.write(part)
    await resp.write_eof()
    return resp


async def stream(request: web.Request) -> web.StreamResponse:
    n, size = int(_num(request, "n", 5)), int(_num(request, "size", 16))
    parts = [_chunk(i, size) for i in range(n)]
    return await _drip(request, "text/plain", parts, _num(request, "interval", 0.1))


async def sse(request: web.Request) -> web.StreamResponse:
    parts = [f"data: {i}\n\n".encode() for i in range(int(_num(request, "n", 5)))]
    return await _drip(request, "text/event-stream", parts, _num(request, "interval", 0.1))


async def nbytes(request: web.Request) -> web.StreamResponse:
    n = int(_num(request, "n", 0))
    if n < 0:
        raise web.HTTPBadRequest(text="n must be >= 0")
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = n
    await resp.prepare(request)
    block = b"x" * WRITE_SIZE
    for start in range(0, n, WRITE_SIZE):
        await resp.write(block[: min(WRITE_SIZE, n - start)])
    await resp.write_eof()
    return resp


async def status(request: web.Request) -> web.Response:
    try:
        code = int(request.match_info["code"])
    except ValueError:
        raise web.HTTPBadRequest(text="status must be an integer") from None
    if not 200 <= code <= 599:
        raise web.HTTPBadRequest(text="status must be within 200..599")
    if code in NO_BODY_STATUSES:
        return web.Response(status=code)
    return web.json_response({"status": code}, status=code)


async def headers(request: web.Request) -> web.Response:
    resp = web.json_response({"set": request.query.getall("set", [])})
    for item in request.query.getall("set", []):
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise web.HTTPBadRequest(text=f"bad set={item!r}, expected Name:Value")
        resp.headers.add(name.strip(), value.strip())
    return resp


async def websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(protocols=WS_PROTOCOLS)
    await ws.prepare(request)
    State.websockets.add(ws)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type != WSMsgType.TEXT:
                break
            elif msg.data.startswith("close:") and msg.data[6:].isdigit():
                await ws.close(code=int(msg.data[6:]), message=b"requested")
            elif msg.data == "whoami":
                await ws.send_str(WORKER_ID)
            elif msg.data == "protocol":
                await ws.send_str(ws.ws_protocol or "")
            elif msg.data == "headers":
                await ws.send_str(json.dumps(_headers(request)))
            else:
                await ws.send_str(msg.data)
    finally:
        State.websockets.discard(ws)
        State.ws_close_codes.append(ws.close_code or 0)
    return ws


async def exit_now(request: web.Request) -> web.Response:
    os._exit(int(_num(request, "code", 1)))


async def stats(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "worker": WORKER_ID,
            "pid": PID,
            "ready": State.ready,
            "inflight": State.inflight,
            "peak_inflight": State.peak_inflight,
            "requests": State.requests,
            "ws_close_codes": State.ws_close_codes,
        }
    )


@web.middleware
async def _count(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count app requests in flight (open WebSockets included); /ping and /stats are not counted."""
    if request.path in ("/ping", "/stats"):
        return await handler(request)
    State.requests += 1
    State.inflight += 1
    State.peak_inflight = max(State.peak_inflight, State.inflight)
    try:
        return await handler(request)
    finally:
        State.inflight -= 1


async def _tag(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Echo-Worker"] = WORKER_ID


async def _close_websockets(app: web.Application) -> None:
    for ws in list(State.websockets):
        await ws.close(code=1001, message=b"worker shutting down")


def make_app(*, app_routes: bool, ping_route: bool) -> web.Application:
    app = web.Application(middlewares=[_count] if app_routes else [])
    app.on_response_prepare.append(_tag)
    if ping_route:
        app.router.add_get("/ping", ping)
    if app_routes:
        app.on_shutdown.append(_close_websockets)
        app.router.add_route("*", "/echo", echo)
        app.router.add_route("*", r"/echo/{tail:[\s\S]*}", echo)
        app.router.add_route("*", "/sleep", sleep)  # any method: a long POST (an LLM call) too
        app.router.add_get("/stream", stream)
        app.router.add_get("/sse", sse)
        app.router.add_get("/bytes", nbytes)
        app.router.add_get("/status/{code}", status)
        app.router.add_get("/headers", headers)
        app.router.add_get("/ws", websocket)
        app.router.add_post("/exit", exit_now)
        app.router.add_get("/pid", stats)
        app.router.add_get("/stats", stats)
    return app


async def _initialise(delay: float) -> None:
    await asyncio.sleep(delay)  # simulated model loading; the loop keeps serving /ping (204)
    State.ready = os.environ.get("ECHO_NEVER_READY") != "1"


def _leave_a_listener_holder(seconds: float) -> None:
    """Fork a child that holds the listening sockets for ``seconds`` in a session of its own, never accepting:
    after the worker dies its port still takes connections for a while (a forked model loader does that)."""
    if seconds <= 0 or os.fork() != 0:
        return
    os.setsid()
    time.sleep(seconds)
    os._exit(0)


async def main() -> int:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ["PORT"])
    health_port = int(os.environ.get("PORT_HEALTH") or port)
    shutdown_timeout = float(os.environ.get("ECHO_SHUTDOWN_TIMEOUT", "30"))

    apps = [make_app(app_routes=True, ping_route=health_port == port)]
    if health_port != port:
        apps.append(make_app(app_routes=False, ping_route=True))
    runners = [web.AppRunner(app, handle_signals=False, shutdown_timeout=shutdown_timeout) for app in apps]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for runner, site_port in zip(runners, [port, health_port][: len(runners)], strict=True):
            await runner.setup()
            await web.TCPSite(runner, host, site_port).start()
        _leave_a_listener_holder(float(os.environ.get("ECHO_LISTENER_CHILD", "0")))
        init = asyncio.create_task(_initialise(float(os.environ.get("ECHO_INIT_DELAY", "0"))))
        print(f"echo worker {WORKER_ID} listening on {port} (health {health_port})", flush=True)
        await stop.wait()
        init.cancel()
    finally:  # each runner stops listening at once, then waits for its in-flight handlers
        await asyncio.gather(*(runner.cleanup() for runner in runners))
    return 0


if __name__ == "__main__":
    if os.environ.get("ECHO_CRASH_AT_START") == "1":
        print("echo worker: crashing at start (ECHO_CRASH_AT_START=1)", file=sys.stderr, flush=True)
        sys.exit(3)
    if not os.environ.get("PORT"):
        print("echo worker: PORT is required", file=sys.stderr, flush=True)
        sys.exit(2)
    sys.exit(asyncio.run(main()))
