"""A WebSocket session after the worker's 101: bytes both ways, unparsed, with back-pressure.

Messages are never reassembled, unmasked or re-framed, so extensions (``permessage-deflate``) and subprotocols
are end to end. Back-pressure is the exchange's (a full client buffer pauses reading the worker, a full worker
buffer pauses reading the client). Only frame boundaries are followed (``websocket.FrameCursor``), so that at
``timeouts.execution`` a close frame (1011) can go to each end between two frames.
"""

from __future__ import annotations

import asyncio

from .upstream import UpstreamConnection
from .websocket import INTERNAL_ERROR, FrameCursor, close_frame

TIMEOUT_REASON = b"execution timeout"


class Tunnel:
    __slots__ = ("client", "down", "to_client", "to_worker", "up", "worker")

    def __init__(self, client: asyncio.Transport, worker: UpstreamConnection) -> None:
        self.client = client
        self.worker = worker
        self.up = FrameCursor()  # client -> worker
        self.down = FrameCursor()  # worker -> client
        self.to_worker = 0
        self.to_client = 0

    def from_client(self, data: bytes) -> None:
        worker = self.worker
        if not worker.closed:
            self.up.feed(data)
            self.to_worker += len(data)
            worker.transport.write(data)

    def from_worker(self, data: bytes) -> None:
        client = self.client
        if not client.is_closing():
            self.down.feed(data)
            self.to_client += len(data)
            client.write(data)

    def timeout(self) -> None:
        """Close frames to both ends (masked toward the worker, as a client's are), where a frame may go."""
        worker, client = self.worker, self.client
        worker.pause_reading()
        if self.up.at_boundary and not worker.closed:
            worker.transport.write(close_frame(INTERNAL_ERROR, TIMEOUT_REASON, masked=True))
        if self.down.at_boundary and not client.is_closing():
            client.write(close_frame(INTERNAL_ERROR, TIMEOUT_REASON, masked=False))

    def close(self) -> None:
        """The session is over: the worker connection goes (after what is buffered for it)."""
        self.worker.close()
