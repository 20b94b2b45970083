"""Realtime WebSocket worker: a session that streams its answers token by token, without a model.

The shape of realtime speech/LLM servers behind lbproxy: one long-lived WebSocket per session, JSON events
both ways, answers streamed as deltas, a turn that can be cancelled mid-answer. lbproxy holds the worker slot
for the whole session (``workers.concurrency`` counts sessions). Only stdlib + aiohttp.

Worker contract: ``GET /ping`` answers 204 while loading, 200 once ready.

Environment:
    PORT, PORT_HEALTH, HOST   as for every worker (HOST default 127.0.0.1)
    LBPROXY_WORKER_ID         worker id, in ``session.created`` (default: the pid)
    REALTIME_LOAD_SECONDS     simulated load time, /ping answers 204 meanwhile (default 0)
    REALTIME_TOKEN_DELAY      seconds between tokens (default 0.02)

Protocol on ``GET /v1/realtime`` (WebSocket, text frames of JSON):
    server -> {"type": "session.created", "session": ID, "worker": WORKER_ID}
    client -> {"type": "input_text", "text": "..."}            adds a user turn
    client -> {"type": "response.create", "max_tokens": N}      answers it (N optional, default 256):
    server -> {"type": "response.delta", "response": R, "index": i, "delta": TOKEN}   one per token
    server -> {"type": "response.done", "response": R, "tokens": n, "status": "completed"|"cancelled"|
                                                                             "incomplete"}
    client -> {"type": "response.cancel"}                       stops the answer in progress
    client -> {"type": "session.close"}                         the server closes with 1000
The answer to turn T with text "a b" is "Turn", " T", ":", " a", " b", "." (cut to max_tokens: incomplete).
A bad message gets {"type": "error", "message": ...} and the session goes on.

SIGTERM/SIGINT: stop listening, close sessions with 1001 (going away), exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from typing import Any

from aiohttp import WSMsgType, web

WORKER_ID = os.environ.get("LBPROXY_WORKER_ID") or str(os.getpid())


class State:
    ready = False
    sessions: set[web.WebSocketResponse] = set()


def answer(turn: int, text: str) -> list[str]:
    return ["Turn", f" {turn}", ":", *(f" {word}" for word in text.split()), "."]


class Session:
    """One client's conversation: its turns, and the answer being streamed (at most one at a time)."""

    def __init__(self, ws: web.WebSocketResponse) -> None:
        self.ws = ws
        self.id = f"sess_{uuid.uuid4().hex[:16]}"
        self.turns: list[str] = []
        self.responses = 0
        self.streaming: asyncio.Task[None] | None = None

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send_str(json.dumps(event))

    async def handle(self, event: Any) -> bool:
        """Act on one client event; False ends the session."""
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "input_text" and isinstance(event.get("text"), str):
            self.turns.append(event["text"])
        elif kind == "response.create":
            limit = event.get("max_tokens", 256)
            if not self.turns:
                await self.send({"type": "error", "message": "send input_text before response.create"})
            elif self.streaming is not None and not self.streaming.done():
                await self.send({"type": "error", "message": "a response is in progress; cancel it first"})
            elif not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                await self.send({"type": "error", "message": "max_tokens must be a positive integer"})
            else:
                self.responses += 1
                tokens = answer(len(self.turns), self.turns[-1])
                self.streaming = asyncio.create_task(self.stream(f"resp_{self.responses}", tokens, limit))
        elif kind == "response.cancel":
            if self.streaming is not None:
                self.streaming.cancel()
        elif kind == "session.close":
            return False
        else:
            await self.send({"type": "error", "message": f"unknown or malformed event: {json.dumps(event)[:100]}"})
        return True

    async def stream(self, response: str, tokens: list[str], limit: int) -> None:
        delay = float(os.environ.get("REALTIME_TOKEN_DELAY", "0.02"))
        sent = 0
        status = "incomplete" if len(tokens) > limit else "completed"
        try:
            for index, token in enumerate(tokens[:limit]):
                await asyncio.sleep(delay)
                await self.send({"type": "response.delta", "response": response, "index": index, "delta": token})
                sent += 1
        except asyncio.CancelledError:
            status = "cancelled"
        if not self.ws.closed:
            with contextlib.suppress(ConnectionError):
                await self.send({"type": "response.done", "response": response, "tokens": sent, "status": status})


async def realtime(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=30)
    await ws.prepare(request)
    State.sessions.add(ws)
    session = Session(ws)
    try:
        await session.send({"type": "session.created", "session": session.id, "worker": WORKER_ID})
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                if msg.type == WSMsgType.BINARY:
                    await session.send({"type": "error", "message": "send JSON text frames"})
                    continue
                break
            try:
                event = json.loads(msg.data)
            except json.JSONDecodeError:
                await session.send({"type": "error", "message": "not JSON"})
                continue
            if not await session.handle(event):
                if session.streaming is not None:
                    session.streaming.cancel()
                    await asyncio.gather(session.streaming, return_exceptions=True)
                await ws.close(code=1000, message=b"session closed")
                break
    finally:
        if session.streaming is not None and not session.streaming.done():
            session.streaming.cancel()
            await asyncio.gather(session.streaming, return_exceptions=True)
        State.sessions.discard(ws)
    return ws


async def ping(request: web.Request) -> web.Response:
    return web.Response(status=200 if State.ready else 204)


async def _close_sessions(app: web.Application) -> None:
    for ws in list(State.sessions):
        await ws.close(code=1001, message=b"worker shutting down")


def make_app(*, app_routes: bool) -> web.Application:
    app = web.Application()
    app.router.add_get("/ping", ping)
    if app_routes:
        app.on_shutdown.append(_close_sessions)
        app.router.add_get("/v1/realtime", realtime)
    return app


async def _load(seconds: float) -> None:
    await asyncio.sleep(seconds)
    State.ready = True


async def main() -> int:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ["PORT"])
    health_port = int(os.environ.get("PORT_HEALTH") or port)
    runners = [web.AppRunner(make_app(app_routes=True))]
    if health_port != port:
        runners.append(web.AppRunner(make_app(app_routes=False)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for runner, site_port in zip(runners, [port, health_port], strict=False):
            await runner.setup()
            await web.TCPSite(runner, host, site_port).start()
        load = asyncio.create_task(_load(float(os.environ.get("REALTIME_LOAD_SECONDS", "0"))))
        print(f"realtime worker {WORKER_ID} listening on {port} (health {health_port})", flush=True)
        await stop.wait()
        load.cancel()
    finally:
        await asyncio.gather(*(runner.cleanup() for runner in runners))
    return 0


if __name__ == "__main__":
    if not os.environ.get("PORT"):
        print("realtime worker: PORT is required", file=sys.stderr, flush=True)
        sys.exit(2)
    sys.exit(asyncio.run(main()))
