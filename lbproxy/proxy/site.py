"""The proxy's listening socket: a ``ClientConnection`` per client, one sweeper timer for every deadline, and
a graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from time import monotonic

from ..metrics import Metrics
from ..pool import WorkerPool
from .connection import ClientConnection
from .settings import ProxySettings
from .shared import Shared

log = logging.getLogger("lbproxy.proxy")

TICK = 0.5  # the sweeper's period: timeouts fire within this much of their deadline


class ProxyServer:
    """A protocol factory for ``loop.create_server`` and the state its connections share."""

    def __init__(self, pool: WorkerPool, metrics: Metrics, settings: ProxySettings) -> None:
        self.shared = Shared(pool, metrics, settings)
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    def __call__(self) -> ClientConnection:
        return ClientConnection(self.shared)

    @property
    def settings(self) -> ProxySettings:
        return self.shared.settings

    @settings.setter
    def settings(self, settings: ProxySettings) -> None:
        """A reload: requests from now on get these; those in progress keep theirs."""
        self.shared.settings = settings

    async def start(self, sock: socket.socket) -> tuple[str, int]:
        """Serve on a bound listening socket; returns its address."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self, sock=sock, backlog=1024)
        self._sweep()
        bound = sock.getsockname()
        return str(bound[0]), int(bound[1])

    def _sweep(self) -> None:
        now = monotonic()
        for conn in list(self.shared.connections):
            try:
                conn.tick(now)
            except Exception:
                log.exception("bug in a client connection's timeouts; closing it")
                conn.transport.abort()
        self.shared.upstream.expire(now)
        self._sweeper = asyncio.get_running_loop().call_later(TICK, self._sweep)

    async def cleanup(self, grace: float) -> None:
        """Stop accepting, let requests in progress finish (at most ``grace`` seconds); then answer 503
        ``shutting_down`` those with no response yet, and cut the rest."""
        shared = self.shared
        shared.closing = True
        if self._server is not None:
            self._server.close()
        for conn in list(shared.connections):
            conn.shutdown()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await shared.drained().wait()
        outcomes = [conn.cut() for conn in list(shared.connections) if conn.busy()]
        if outcomes:
            answered = sum(1 for x in outcomes if x)
            log.warning("shutdown: timeouts.shutdown (%gs) passed with %d request(s) in progress: %d answered 503 "
                        "shutting_down (no response byte yet), %d cut mid-response", grace, len(outcomes),
                        answered, len(outcomes) - answered)
            await self._flush(1.0)
        for conn in list(shared.connections):
            conn.transport.abort()
        shared.upstream.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.sleep(0)  # let the aborted connections run connection_lost (slots freed)

    async def _flush(self, limit: float) -> None:
        """Give the last answers (503s) at most ``limit`` seconds to leave before the connections are dropped."""
        deadline = monotonic() + limit
        # A transport says when its buffer drops below the low-water mark, never when it is empty: poll.
        while monotonic() < deadline and any(  # noqa: ASYNC110
                c.transport.get_write_buffer_size() for c in self.shared.connections if not c.transport.is_closing()):
            await asyncio.sleep(0.01)
