"""Keep-alive connections to workers: an ``asyncio.Protocol`` each, parsed with llhttp, pooled per worker.

A connection goes back to its worker's pool only after a complete, well-framed response to a request that was
sent whole; anything else closes it. Pooled connections idle for ``UPSTREAM_KEEPALIVE`` (4 s, below the 5 s
keep-alive of common Python servers) are dropped, so lbproxy never writes into one the worker is closing.
"""

from __future__ import annotations

import asyncio
import logging
import select
from typing import cast

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpResponseParser

from ..policy import WorkerState
from ..pool import Worker
from .framing import Header
from .sides import ResponseSink

log = logging.getLogger("lbproxy.proxy")

CONNECT_TIMEOUT = 10.0
# Below the 5 s keep-alive timeout of common Python servers (uvicorn, gunicorn), so a pooled connection is
# dropped by us before the worker closes it under a request we are sending.
UPSTREAM_KEEPALIVE = 4.0
# What the response's head says about reading what follows (ResponseSink.response_head's answer): a framed
# body, none (HEAD), a body until the close, or a WebSocket session (a 101 to a handshake).
FRAMED, SKIP_BODY, UNTIL_CLOSE, SWITCH = 0, 1, 2, 3


class NotSent(Exception):
    """The worker could not be reached: nothing of the request was sent, so another worker may take it."""


class _SkipBody(Exception):
    """A HEAD response ends with its head. httptools cannot tell llhttp so, hence this exception."""


class _Stray(Exception):
    """A worker sent a message nobody asked for (after a complete response, in the same read)."""


class Endpoint:
    """One worker's address and its idle connections (a stack: the most recently used is reused first)."""

    __slots__ = ("host_line", "idle", "worker")

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.host_line = b"Host: " + worker.authority.encode() + b"\r\n"
        self.idle: list[UpstreamConnection] = []


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("closed", "endpoint", "headers", "idle_since", "informational", "keep_alive", "parser", "poller",
                 "reading_paused", "reason", "reused", "sink", "transport", "tunnelling", "until_close",
                 "writing_paused")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.transport = cast(asyncio.Transport, None)
        self.parser = HttpResponseParser(self)
        self.sink: ResponseSink | None = None
        self.headers: list[Header] = []
        self.reason = b""
        self.keep_alive = False
        self.until_close = False
        self.informational = False
        self.idle_since = 0.0
        self.reused = False  # taken from the pool: the worker may have closed it just as a request went out
        self.closed = False
        self.writing_paused = False
        self.reading_paused = False
        self.tunnelling = False  # after a 101: bytes go to the sink unparsed
        self.poller: select.poll | None = None

    # -- asyncio ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # registered once: asking it before each reuse is then one syscall and no allocation
            self.poller = select.poll()
            self.poller.register(sock.fileno(), _POLL_FLAGS)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:  # an idle pooled connection has nothing to say: whatever it is, do not reuse it
            self.close()
            return
        if self.tunnelling:
            sink.from_worker(data)
            return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            if not self.tunnelling:  # a 101 the exchange did not ask for (only handshakes may switch)
                self._fail(ValueError("the worker switched protocols without a WebSocket handshake"))
                return
            self.parser = cast(HttpResponseParser, None)  # never parsed again: free it
            rest = data[int(exc.args[0]):]
            if rest and self.sink is not None:
                self.sink.from_worker(rest)
            return
        except HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, _SkipBody):
                self.parser = HttpResponseParser(self)  # the old one stopped mid-message
                sink = self.sink
                if sink is not None:  # reusable only if nothing followed the head (a worker bug otherwise)
                    sink.response_complete(self.keep_alive and data.endswith(b"\r\n\r\n"))
                return
            if isinstance(cause, _Stray):
                self.close()
                return
            log.error("bug while reading a worker's response", exc_info=cause)
            self._fail(cause or exc)
        except HttpParserError as exc:
            self._fail(ValueError(f"invalid response from the worker: {exc}"))
        else:
            sink = self.sink
            if sink is not None:
                sink.response_flush()

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost says the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        sink = self.sink
        if sink is None:
            return
        self.sink = None
        if self.tunnelling:
            sink.worker_closed()
        elif exc is None and self.until_close:  # the response ends with the connection (HTTP/1.0 style)
            sink.response_complete(False)
        else:
            sink.upstream_failed(exc or ConnectionResetError("the worker closed the connection"))

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.sink is not None:
            self.sink.upstream_writable(False)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.sink is not None:
            self.sink.upstream_writable(True)

    # -- llhttp ----------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.sink is None:  # bytes after the response in the same read: not ours to forward, nor to reuse
            raise _Stray

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        headers, reason = self.headers, self.reason
        self.headers, self.reason = [], b""  # for the next message (no on_message_begin: one callback less)
        status = self.parser.get_status_code()
        if status < 200 and status != 101:  # 100 Continue, 103 Early Hints: not forwarded
            self.informational = True
            return
        self.keep_alive = self.parser.should_keep_alive()
        sink = self.sink
        if sink is None:  # the exchange gave up on this response meanwhile (its connection is closing)
            return
        framing = sink.response_head(status, reason, headers, self.keep_alive)
        self.until_close = framing == UNTIL_CLOSE
        self.tunnelling = framing == SWITCH
        if framing == SKIP_BODY:
            raise _SkipBody

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.response_body(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        if self.tunnelling:  # llhttp ends a 101's message before the switch: the session only begins
            return
        sink = self.sink
        if sink is not None:
            sink.response_complete(self.keep_alive)

    # -- the exchange's controls -----------------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        sink = self.sink
        self.close()
        if sink is not None:
            sink.upstream_failed(exc)

    def pause_reading(self) -> None:
        if not self.reading_paused and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused and not self.closed:
            self.reading_paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        """Not reusable: close it (whatever the worker still sends is dropped)."""
        self.sink = None
        if not self.closed:
            self.closed = True
            self.transport.close()


_POLL_FLAGS = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


def _has_news(c: UpstreamConnection) -> bool:
    """Whether an idle connection has anything to read (the worker's FIN or RST, stray bytes) that the event loop
    has not delivered yet: then it is not reusable."""
    poller = c.poller
    return poller is None or bool(poller.poll(0))


class UpstreamPool:
    """Idle keep-alive connections per worker, and new ones on demand."""

    def __init__(self, keepalive: float = UPSTREAM_KEEPALIVE) -> None:
        self.keepalive = keepalive
        self._endpoints: dict[Worker, Endpoint] = {}

    def endpoint(self, w: Worker) -> Endpoint:
        ep = self._endpoints.get(w)
        if ep is None:
            ep = self._endpoints[w] = Endpoint(w)
        return ep

    def take(self, ep: Endpoint, now: float) -> UpstreamConnection | None:
        """An idle connection to the worker young enough to trust, or None."""
        idle = ep.idle
        while idle:
            c = idle.pop()
            if not c.closed and now - c.idle_since < self.keepalive and not _has_news(c):
                c.reused = True
                return c
            c.close()
        return None

    async def connect(self, ep: Endpoint) -> UpstreamConnection:
        """A new connection; raises NotSent when the worker cannot be reached, TimeoutError after 10 s."""
        w = ep.worker
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, conn = await loop.create_connection(lambda: UpstreamConnection(ep), w.host, w.port)
        except OSError as exc:
            raise NotSent(f"cannot connect to {w.authority}: {exc}") from exc
        return conn

    def put(self, c: UpstreamConnection, now: float) -> None:
        """Keep a connection that served a complete exchange, while its worker takes requests."""
        ep = c.endpoint
        if c.closed or ep.worker.state is not WorkerState.READY or self._endpoints.get(ep.worker) is not ep:
            c.close()
            return
        c.idle_since = now
        ep.idle.append(c)

    def worker_changed(self, w: Worker, old: WorkerState) -> None:
        """A pool listener: a worker that left the ready state gets no new requests, so its idle connections go."""
        if w.state is WorkerState.READY:
            return
        ep = self._endpoints.get(w)
        if ep is None:
            return
        for c in ep.idle:
            c.close()
        ep.idle.clear()
        if w.state is WorkerState.EXITED:
            del self._endpoints[w]

    def expire(self, now: float) -> None:
        """Close idle connections older than the keep-alive (the oldest are at the bottom of each stack)."""
        limit = now - self.keepalive
        for ep in self._endpoints.values():
            idle = ep.idle
            stale = 0
            while stale < len(idle) and (idle[stale].idle_since <= limit or idle[stale].closed):
                idle[stale].close()
                stale += 1
            if stale:
                del idle[:stale]

    def close(self) -> None:
        for ep in self._endpoints.values():
            for c in ep.idle:
                c.close()
            ep.idle.clear()
        self._endpoints.clear()
