"""The client side: an ``asyncio.Protocol`` per client connection, parsed with llhttp (httptools).

Requests on one connection are answered in order: the first in ``queue`` is served, later (pipelined) ones
wait there, with reading paused. A WebSocket handshake is an exchange like any other; on the worker's 101 the
connection stops parsing and its bytes go to that exchange's tunnel (``TUNNELLING``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from time import monotonic
from typing import cast

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from ..sockets import reset
from . import errors, framing
from .errors import ProxyError
from .exchange import Exchange
from .framing import Header
from .shared import Shared
from .sides import BODY_FLAG, PIPELINE_FLAG, UPGRADE_FLAG

log = logging.getLogger("lbproxy.proxy")

# Slowloris: a request head (or a new connection's first one) must arrive whole within this. A real client
# sends a head in one write; 5 s covers a slow mobile link (Go servers commonly use ReadHeaderTimeout 5-10 s).
HEADER_TIMEOUT = 5.0
# An idle keep-alive connection is closed after this (aiohttp's default, 3,630 s). It is longer
# than the idle timeout of load balancers in front (60-600 s), so they, not lbproxy, close idle connections.
KEEPALIVE_TIMEOUT = 3630.0
MAX_HEAD = 64 * 1024  # request line + headers; more gets 431
MAX_HEADERS = 128  # as aiohttp
# Requests parsed ahead of their turn (pipelining). One read can hold thousands of tiny ones: past this, the
# connection answers those it took and closes (RFC 9112 9.3.2: the client retries the rest).
MAX_PIPELINE = 64
LINGER = 2.0  # after the last response of a closing connection, what the client still sends is read this long
OPEN, TUNNELLING, LINGERING, CLOSED = range(4)
_NEVER = float("inf")


def _declares_body(headers: list[Header]) -> bool:
    """Whether a request head announces a body (Transfer-Encoding, or a Content-Length other than 0)."""
    for name, value in headers:
        name = name.lower()
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def _connection_upgrade(headers: list[Header]) -> bool:
    """'Connection: upgrade': only then does llhttp stop at the head and hand over what follows (the tail)."""
    return any(name.lower() == b"connection" and b"upgrade" in {t.strip().lower() for t in value.split(b",")}
               for name, value in headers)


class _Stop(Exception):
    """Raised in a parser callback: parse nothing further on this connection."""


class _HeadTooLarge(Exception):
    pass


class ClientConnection(asyncio.Protocol):
    __slots__ = ("blocked", "chunk_raw", "deadline", "head_raw", "head_size", "headers", "last", "linger_left",
                 "parser", "peer", "queue", "receiving", "session", "shared", "start_pending", "started", "state",
                 "tail", "transport", "url", "writing_paused")

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.transport = cast(asyncio.Transport, None)
        self.parser = HttpRequestParser(self)
        self.queue: deque[Exchange] = deque()
        self.receiving: Exchange | None = None  # the exchange whose body the parser is reading
        self.headers: list[Header] = []
        self.url = b""
        self.head_size = -1  # bytes of the head being parsed; -1 between requests
        self.head_raw = 0
        self.started = 0.0
        self.blocked = 0
        self.writing_paused = False
        self.peer = b""
        self.deadline = monotonic() + HEADER_TIMEOUT
        self.state = OPEN
        self.last = False  # parse no further requests (Connection: close, a parse error, an upgrade)
        self.tail: bytes | None = None  # what followed a WebSocket handshake, for the worker after its 101
        self.session: Exchange | None = None  # the exchange tunnelling a WebSocket session
        self.start_pending = False
        self.linger_left = 0  # bytes still to send while lingering, at the last look
        # Bytes read since a chunk-size line or the trailer section began (-1: it began in this read; None: not in one)
        self.chunk_raw: int | None = None

    # -- asyncio ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer = str(peer[0]).encode()
        self.shared.connections.add(self)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is not None:
            session.from_client(data)
            return
        if self.last:
            if self.tail is not None:
                self.tail += data
            return  # after the last request (or lingering): dropped
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            self._upgraded(data, int(exc.args[0]))
        except HttpParserCallbackError as exc:
            self._callback_failed(exc)
        except HttpParserError as exc:
            self._malformed(str(exc) or type(exc).__name__)
        else:
            if self.chunk_raw is not None:  # httptools buffers a trailer line whole: bound it as a head
                if self.chunk_raw < 0:
                    self.chunk_raw = 0
                else:
                    self.chunk_raw += len(data)
                    if self.chunk_raw > MAX_HEAD:
                        self.chunk_raw = None
                        self._malformed("chunk header or trailer section too large")
            if self.head_size >= 0:  # a head still incomplete: httptools holds a partial header line meanwhile
                if self.head_raw < 0:  # it began in this read, which is bounded by the transport's read size
                    self.head_raw = 0
                else:
                    self.head_raw += len(data)
                    if self.head_raw > MAX_HEAD:
                        self._reject_head(errors.HEAD_TOO_LARGE, {"limit": MAX_HEAD})
        if self.start_pending:
            self.start_pending = False
            self._start_next()

    def eof_received(self) -> bool | None:
        # The client closed: a client gone mid-request cancels it (as nginx does). A
        # half-close that still waits for responses is told apart from a close only by writing into it, too late.
        return None  # the transport closes; connection_lost frees what the exchanges hold

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        self.session = None
        for ex in list(self.queue):
            ex.client_lost()
        self.queue.clear()
        self.receiving = None
        self.shared.forget(self)

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.queue:
            self.queue[0].client_writable(False)

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.queue:
            self.queue[0].client_writable(True)

    # -- llhttp ----------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.last:
            raise _Stop
        self.headers = []
        self.url = b""
        self.head_size = 0
        self.head_raw = -1
        self.started = now = monotonic()
        self.deadline = now + HEADER_TIMEOUT

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_size += len(url)
        if self.head_size > MAX_HEAD:
            raise _HeadTooLarge

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_size < 0:  # a trailer field of a chunked body: not forwarded
            return
        self.head_size += len(name) + len(value) + 4
        if self.head_size > MAX_HEAD or len(self.headers) >= MAX_HEADERS:
            raise _HeadTooLarge
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if len(self.queue) >= MAX_PIPELINE:
            self.last = True
            self.head_size = -1
            raise _Stop
        parser = self.parser
        self.head_size = -1
        self.deadline = _NEVER
        version = parser.get_http_version()
        shared = self.shared
        ex = Exchange(self, shared, self.started, parser.get_method(), self.url, version == "1.0",
                      parser.should_keep_alive())
        if version != "1.1" and version != "1.0":
            ex.reject(errors.MALFORMED, close=True, detail=f"HTTP/{version} is not supported")
        else:
            info = framing.scan_request(self.headers, ex.settings.drop_authorization)
            # A WebSocket handshake (llhttp stops at its head): tunnelled if the worker answers 101.
            upgrade = (info.websocket and ex.method == b"GET" and version == "1.1"
                       and _connection_upgrade(self.headers))
            if upgrade:
                self.last = True
            ex.prepare(info, upgrade)
        self._enqueue(ex)
        self.receiving = ex

    def on_chunk_header(self) -> None:
        self.chunk_raw = -1

    def on_chunk_complete(self) -> None:
        self.chunk_raw = None

    def on_body(self, body: bytes) -> None:
        self.chunk_raw = None
        ex = self.receiving
        if ex is not None:
            ex.request_body(body)

    def on_message_complete(self) -> None:
        ex = self.receiving
        if ex is None:
            return
        self.receiving = None
        ex.request_complete()
        if not ex.keep_alive or ex.close_after:
            self.last = True

    # -- parse outcomes --------------------------------------------------------------------------

    def _enqueue(self, ex: Exchange) -> None:
        self.queue.append(ex)
        if len(self.queue) == 1:
            self.start_pending = True  # after this read is parsed, so a body in it goes out with the head
        else:
            self.block(PIPELINE_FLAG)

    def _upgraded(self, data: bytes, offset: int) -> None:
        if self.queue and self.queue[-1].upgrade:
            self.tail = data[offset:]  # a client's first frames may come with its handshake
            self.block(UPGRADE_FLAG)
        elif self.last:
            pass
        elif self.queue and _declares_body(self.headers):
            # llhttp ends an upgrade request at its head: a body it declared would be read as the next request
            # (and the worker, told Content-Length, would read the next request as that body).
            self.queue[-1].reject(errors.MALFORMED, close=True,
                                  detail="a request body with 'Upgrade' is not supported")
            self.last = True
        elif offset < len(data):
            # An upgrade lbproxy does not take (h2c): answered as plain HTTP/1.1, the connection goes on so.
            self.data_received(data[offset:])

    def _callback_failed(self, exc: HttpParserCallbackError) -> None:
        cause = exc.__context__
        if isinstance(cause, _Stop):
            return
        if isinstance(cause, _HeadTooLarge):
            return self._reject_head(errors.HEAD_TOO_LARGE, {"limit": MAX_HEAD})
        log.error("bug while reading a request; closing the client connection", exc_info=cause or exc)
        self.last = True
        self.transport.close()

    def _malformed(self, detail: str) -> None:
        """Not HTTP/1.1 as RFC 9112 writes it: a 400 and a close; a request with a broken head is never sent."""
        ex = self.receiving
        if ex is not None:  # broken mid-body: that request fails
            self.receiving = None
            self.last = True
            ex.request_malformed(detail)
        else:
            self._reject_head(errors.MALFORMED, {"detail": detail})

    def _reject_head(self, err: ProxyError, details: dict[str, object]) -> None:
        self.head_size = -1
        self.last = True
        ex = Exchange(self, self.shared, monotonic(), b"", b"", False, False)
        ex.reject(err, (), close=True, **details)
        ex.request_done = True
        self._enqueue(ex)

    # -- serving in order ------------------------------------------------------------------------

    def _start_next(self) -> None:
        if self.state is not OPEN or not self.queue:
            return
        if len(self.queue) == 1:
            self.unblock(PIPELINE_FLAG)
        ex = self.queue[0]
        try:
            ex.start()
        except Exception:
            log.exception("bug while starting a request; closing the client connection")
            self.transport.abort()  # connection_lost frees what the exchange holds

    def parser_busy(self) -> bool:
        return self.receiving is not None or self.head_size >= 0

    def exchange_done(self, exchange: object, keep: bool) -> None:
        """``exchange`` wrote its last byte: serve the next request, wait for one, or close."""
        queue = self.queue
        if queue and queue[0] is exchange:
            queue.popleft()
        if self.state is TUNNELLING:  # the session is over
            self.state = OPEN
            self.session = None
            keep = False
        self.unblock(BODY_FLAG)
        if self.state is not OPEN:
            return
        if not keep or self.shared.closing:
            self.close_softly()
            return self.shared.check_drained()
        if queue:
            asyncio.get_running_loop().call_soon(self._start_next)
        elif self.last and not self.parser_busy():
            self.close_softly()
        else:
            self.unblock(PIPELINE_FLAG)
            if self.head_size < 0:
                self.deadline = monotonic() + KEEPALIVE_TIMEOUT

    def take_tail(self) -> bytes:
        tail, self.tail = self.tail or b"", None
        return tail

    def tunnel(self, exchange: object) -> None:
        """The worker took the WebSocket handshake (101): from now on the client's bytes are the session's."""
        assert isinstance(exchange, Exchange)
        self.state = TUNNELLING
        self.session = exchange
        self.parser = cast(HttpRequestParser, None)  # never parsed again: free it (10,000 sessions add up)
        self.headers = []
        self.unblock(UPGRADE_FLAG)

    def busy(self) -> bool:
        return bool(self.queue)

    # -- flow control and closing ----------------------------------------------------------------

    def block(self, flag: int) -> None:
        if not self.blocked and self.state <= TUNNELLING:
            self.transport.pause_reading()
        self.blocked |= flag

    def unblock(self, flag: int) -> None:
        if self.blocked & flag:
            self.blocked &= ~flag
            if not self.blocked and self.state <= TUNNELLING:
                self.transport.resume_reading()

    def close_softly(self) -> None:
        """Send what is buffered, then FIN; read and drop what the client still sends (so no RST eats the
        response), for at most LINGER seconds."""
        if self.state is not OPEN:
            return
        self.state = LINGERING
        self.last = True
        self.tail = None
        for ex in self.queue:  # pipelined requests never to be answered (the client retries them elsewhere)
            ex.client_lost()
        self.queue.clear()
        t = self.transport
        if self.blocked:
            self.blocked = 0
            t.resume_reading()
        self.deadline = monotonic() + LINGER
        if t.can_write_eof():
            t.write_eof()
        else:
            t.close()

    def tick(self, now: float) -> None:
        """The sweeper's visit: header, idle, linger and execution deadlines."""
        if now > self.deadline:
            if self.state is LINGERING:
                size = self.transport.get_write_buffer_size()
                if size and size != self.linger_left:  # the client still reads the last response: let it
                    self.linger_left = size
                    self.deadline = now + LINGER
                    return
                self.deadline = _NEVER
                reset(self.transport)  # done lingering, or a client that stopped reading: nothing to flush
                return
            if not self.queue:
                self.deadline = _NEVER
                self.transport.close()  # slowloris or idle keep-alive
                return
        if self.queue:
            ex = self.queue[0]
            if now > ex.deadline:
                ex.timeout()

    def shutdown(self) -> None:
        """Stop: close now when idle, else after the responses in progress (they say Connection: close)."""
        if self.state is OPEN and not self.queue:
            self.close_softly()

    def cut(self) -> bool | None:
        """Shutdown's grace is over: the request in progress gets 503 ``shutting_down`` if nothing of its response
        went out yet (True), else its connection is reset (False); pipelined ones behind it are dropped. None:
        nothing was in progress."""
        if not self.queue:
            return None
        return self.queue[0].cut()

    def local_host(self) -> bytes:
        """X-Forwarded-Host without a Host header: the address the request came to (as aiohttp's request.host)."""
        sock = self.transport.get_extra_info("sockname")
        if isinstance(sock, tuple):
            return f"{sock[0]}:{sock[1]}".encode()
        return b""
