"""What the connections and exchanges of one listener share: the pool, the worker connections, the settings of
the moment, the metrics, and whether the endpoint is closing."""

from __future__ import annotations

import asyncio
from typing import Protocol

from ..metrics import Metrics
from ..pool import WorkerPool
from .settings import ProxySettings
from .upstream import UpstreamPool


class Connection(Protocol):
    """A client connection, as the listener's sweeper and shutdown see it."""

    transport: asyncio.Transport

    def busy(self) -> bool:
        """A request is in progress (its response not yet complete)."""

    def tick(self, now: float) -> None:
        """Deadlines: the request head, idle keep-alive, lingering, the execution timeout."""

    def shutdown(self) -> None:
        """Stop: close when idle, else after the responses in progress."""

    def cut(self) -> bool | None:
        """The shutdown grace is over: 503 for a request with no response yet (True), else a reset (False); None
        when nothing was in progress."""


class Shared:
    __slots__ = ("_drained", "closing", "connections", "metrics", "pool", "settings", "upstream")

    def __init__(self, pool: WorkerPool, metrics: Metrics, settings: ProxySettings) -> None:
        self.pool = pool
        self.metrics = metrics
        self.settings = settings  # replaced whole on reload: each request reads it once, at its head
        self.upstream = UpstreamPool()
        pool.on_state_change(self.upstream.worker_changed)
        self.closing = False
        self.connections: set[Connection] = set()
        self._drained: asyncio.Event | None = None

    def forget(self, conn: Connection) -> None:
        self.connections.discard(conn)
        if self.closing:
            self.check_drained()

    def drained(self) -> asyncio.Event:
        """Set once no connection has a request in progress (shutdown)."""
        self._drained = asyncio.Event()
        self.check_drained()
        return self._drained

    def check_drained(self) -> None:
        if self._drained is not None and not any(c.busy() for c in self.connections):
            self._drained.set()
