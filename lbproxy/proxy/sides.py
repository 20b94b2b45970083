"""The narrow interfaces the request path's objects meet through, so that none reaches into another.

An exchange sees the client connection it answers as a ``ClientSide``; the parser of its worker connection
calls it as a ``ResponseSink``. The connection in turn drives its exchanges through their public methods.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from .framing import Header

# Why a client connection is not read (flags of ``ClientSide.block``): requests parsed ahead wait for their turn,
# a request body that cannot go anywhere yet, a WebSocket handshake waiting for the worker's answer.
PIPELINE_FLAG, BODY_FLAG, UPGRADE_FLAG = 1, 2, 4


class ClientSide(Protocol):
    """What an exchange needs of the client connection it answers."""

    transport: asyncio.Transport  # written to directly: the hot path
    peer: bytes  # the client's address, for X-Forwarded-For
    writing_paused: bool

    def block(self, flag: int) -> None:
        """Stop reading the client for this reason (until ``unblock``)."""

    def unblock(self, flag: int) -> None: ...

    def local_host(self) -> bytes:
        """The address the client connected to (X-Forwarded-Host without a Host header)."""

    def exchange_done(self, exchange: object, keep: bool) -> None:
        """The exchange wrote its last byte: go on with the next request (``keep``) or close."""

    def take_tail(self) -> bytes:
        """What the client sent after a WebSocket handshake's head (the first frames), once."""

    def tunnel(self, exchange: object) -> None:
        """From now on the client's bytes go to ``exchange.from_client`` unparsed (a WebSocket session)."""


class ResponseSink(Protocol):
    """The exchange a worker connection serves: it gets the response as llhttp parses it."""

    def response_head(self, status: int, reason: bytes, headers: list[Header], keep_alive: bool) -> int: ...
    def response_body(self, data: bytes) -> None: ...
    def response_complete(self, reusable: bool) -> None: ...
    def response_flush(self) -> None: ...
    def upstream_failed(self, exc: BaseException) -> None: ...
    def upstream_writable(self, writable: bool) -> None: ...
    def from_worker(self, data: bytes) -> None:
        """A WebSocket session's bytes from the worker (after its 101)."""

    def worker_closed(self) -> None:
        """The worker ended a WebSocket session (its connection closed)."""
