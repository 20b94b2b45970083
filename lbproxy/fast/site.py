"""The fast path's listening socket and what its connections share: settings, worker connections, the sweeper,
the WebSocket hand-off to aiohttp, and a graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from time import monotonic
from typing import cast

from aiohttp import web
from aiohttp.web_request import BaseRequest

from ..proxy import Proxy
from .server import ClientConnection
from .upstream import UpstreamPool

log = logging.getLogger("lbproxy.fast")

TICK = 0.5  # the sweeper's period: timeouts fire within this much of their deadline


class FastServer:
    """A protocol factory for ``loop.create_server`` (one ``ClientConnection`` per client) and its shared state."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.pool = proxy.pool
        self.metrics = proxy.metrics
        self.keys = proxy.keys
        self.drop_authorization = proxy.drop_authorization
        self.execution_timeout = proxy.execution_timeout
        self.wait_timeout = proxy.wait_timeout
        self.max_body = proxy.max_body
        self.upstream = UpstreamPool()
        self.pool.on_state_change(self.upstream.worker_changed)
        self.connections: set[ClientConnection] = set()
        self.closing = False
        # WebSocket handshakes go to aiohttp with their connection: Proxy.handle bridges them (auth included).
        self.websockets = web.Server(self._websocket, handler_cancellation=True, access_log=None)
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._drained: asyncio.Event | None = None

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    async def start(self, sock: socket.socket) -> tuple[str, int]:
        """Serve on a bound listening socket; returns its address."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self, sock=sock, backlog=1024)
        self._sweep()
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    def forget(self, conn: ClientConnection) -> None:
        self.connections.discard(conn)
        if self.closing:
            self.check_drained()

    def check_drained(self) -> None:
        """During shutdown: wake ``cleanup`` once no connection has a request in progress."""
        if self._drained is not None and not any(c.queue for c in self.connections):
            self._drained.set()

    def _sweep(self) -> None:
        now = monotonic()
        for conn in list(self.connections):
            try:
                conn.tick(now)
            except Exception:
                log.exception("bug in a client connection's timeouts; closing it")
                conn.transport.abort()
        self.upstream.expire(now)
        self._sweeper = asyncio.get_running_loop().call_later(TICK, self._sweep)

    # -- WebSocket -------------------------------------------------------------------------------

    def hand_off(self, transport: asyncio.Transport, data: bytes) -> None:
        """Give the connection to aiohttp, which parses ``data`` (the handshake and what followed) again."""
        proto = self.websockets()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(data)

    async def _websocket(self, request: BaseRequest) -> web.StreamResponse:
        return await self.proxy.handle(cast(web.Request, request))

    # -- shutdown --------------------------------------------------------------------------------

    async def cleanup(self, grace: float) -> None:
        """Stop accepting, let requests in progress finish (at most ``grace`` seconds), then close the rest."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        deadline = monotonic() + grace
        self._drained = asyncio.Event()
        for conn in list(self.connections):
            conn.shutdown()
        self.check_drained()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._drained.wait()
        await self.websockets.shutdown(max(0.0, deadline - monotonic()))
        for conn in list(self.connections):
            conn.transport.abort()
        self.upstream.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)  # let the aborted connections run connection_lost (slots freed)
