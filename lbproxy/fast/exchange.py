"""One request and its response on the fast path: reserve a worker slot, forward, stream back, release once.

The same pipeline as ``Proxy.handle`` (auth -> target -> body limit -> reserve or queue -> forward under the
execution timeout -> release on every path), as callbacks: the common case (a free slot, a pooled upstream
connection) runs without a task; waiting for a slot and connecting run in one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from time import monotonic
from typing import TYPE_CHECKING, Any

from .. import errors
from ..errors import ProxyError
from ..policy import WorkerState
from ..pool import NoWorkerInTime, QueueFull, ShuttingDown, Worker, WorkerGone
from ..proxy import MAX_CONNECT_RETRIES
from ..routing import parse_affinity
from ..sockets import out_of_descriptors, reset
from . import framing
from .framing import CHUNKED, CONTINUE, EMPTY, EXPECTATION_FAILED, LAST_CHUNK, MALFORMED, Header, RequestInfo
from .upstream import CONNECT_TIMEOUT, FRAMED, SKIP_BODY, UNTIL_CLOSE, Endpoint, NotSent, UpstreamConnection

if TYPE_CHECKING:
    from .server import ClientConnection

log = logging.getLogger("lbproxy.fast")

# Request bytes held while no worker connection is ready yet; above it the client is not read.
BODY_BUFFER = 64 * 1024
BODY_FLAG = 2  # ClientConnection.block(): the request body cannot go anywhere right now
_RETRY_SOON = ((b"Retry-After", b"1"),)
_UNAUTHORIZED = ((b"WWW-Authenticate", b"Bearer"),)
# Sent again once when a reused worker connection fails before answering (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
RESEND_WINDOW = 0.5  # seconds after sending in which such a failure is taken for the idle-close race

QUEUED, RESERVING, CONNECTING, FORWARDING, DONE = range(5)
Details = dict[str, object]


class Exchange:
    __slots__ = ("attempt", "body", "buffered", "chunked", "client_keep", "close_after", "conn", "deadline",
                 "error", "expect_continue", "failed", "handoff", "head_request", "http10", "keep_alive", "method",
                 "mode", "out", "preferred", "received", "request_done", "resend", "resend_by", "rid", "server",
                 "started", "state", "status", "strict", "tail", "task", "upstream", "url", "worker", "worker_id")

    def __init__(self, conn: ClientConnection, started: float, method: bytes, url: bytes, http10: bool,
                 keep_alive: bool) -> None:
        self.conn = conn
        self.server = conn.server
        self.started = started
        self.method = method
        self.url = url
        self.http10 = http10
        self.keep_alive = keep_alive  # what the client asked for
        self.head_request = method == b"HEAD"
        self.state = QUEUED
        self.error: tuple[ProxyError, tuple[Header, ...], Details] | None = None
        self.close_after = False
        self.handoff: bytes | None = None  # a WebSocket handshake: its head, for aiohttp
        self.tail = b""
        self.chunked = False
        self.expect_continue = False
        self.rid = b""
        self.preferred: str | None = None
        self.strict = False  # X-Lbproxy-Worker-Id: strict ID
        self.body: list[bytes] | None = None  # request body held until a worker connection is ready
        self.buffered = 0
        self.received = 0
        self.request_done = False
        self.worker: Worker | None = None
        self.worker_id = b""
        self.upstream: UpstreamConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.deadline = float("inf")
        self.attempt = 0
        self.status = 0
        self.mode = EMPTY
        self.out: bytes | None = None  # the response head, held to go out with the first body bytes
        self.client_keep = False
        self.resend: bytes | None = None  # the whole request, while it may be sent once more (see upstream_failed)
        self.resend_by = 0.0  # ... until then
        self.failed = False  # the worker failed this request (counted on it for the log of its exit)

    # -- the request head ------------------------------------------------------------------------

    def reject(self, err: ProxyError, headers: tuple[Header, ...] = (), *, close: bool = False, **details: object
               ) -> None:
        """Answer ``err`` when this exchange's turn comes; nothing goes to a worker."""
        self.error = (err, headers, details)
        self.close_after = self.close_after or close

    def prepare(self, info: RequestInfo) -> None:
        """The checks of ``Proxy._handle``, in its order, then the worker-bound head (less its Host line)."""
        server = self.server
        if self.method == b"CONNECT":
            self.close_after = True  # tunnel bytes may follow: never read them as requests
        if server.keys.enabled and not server.keys.allows(
                info.authorization.decode("utf-8", "surrogateescape") if info.authorization is not None else None):
            return self.reject(errors.UNAUTHORIZED, _UNAUTHORIZED)
        if not self.url.startswith(b"/"):
            return self.reject(errors.BAD_REQUEST)
        if info.transfer_encoding is not None and info.transfer_encoding.strip().lower() != b"chunked":
            return self.reject(MALFORMED, close=True, detail="only 'Transfer-Encoding: chunked' is supported")
        if info.length is not None and info.length > server.max_body:
            return self.reject(errors.BODY_TOO_LARGE, close=True, limit=server.max_body)
        self.chunked = info.chunked
        if info.expect is not None:
            if info.expect != b"100-continue":
                return self.reject(EXPECTATION_FAILED)
            self.expect_continue = not self.http10 and (self.chunked or bool(info.length))
        self.rid = framing.request_id(info.rid)
        if info.preferred:
            self.preferred, self.strict = parse_affinity(info.preferred.decode("latin-1"))
        host = info.host if info.host is not None else self.conn.local_host()
        self.tail = framing.upstream_tail(info, peer=self.conn.peer, host=host, rid=self.rid)

    # -- reserve and connect ---------------------------------------------------------------------

    def start(self) -> None:
        """This exchange's turn: its response is the next one the client gets."""
        if self.error is not None:
            err, headers, details = self.error
            self._answer(err, headers, **details)
        else:
            self._reserve(self.preferred, self.strict)

    def _reserve(self, preferred: str | None, strict: bool = False) -> None:
        w = self.server.pool.try_acquire(preferred, strict)
        if w is not None:
            self._forward(w)
        else:
            self.state = RESERVING
            self.task = asyncio.get_running_loop().create_task(self._guarded(self._wait_for_worker(preferred, strict)))

    async def _guarded(self, step: Coroutine[Any, Any, None]) -> None:
        """Run a waiting step; a bug in it must not leave the slot taken or the client hanging."""
        try:
            await step
        except Exception:
            log.exception("bug while serving a request; closing the client connection")
            self.task = None
            self.client_lost()
            self.conn.transport.abort()

    async def _wait_for_worker(self, preferred: str | None, strict: bool) -> None:
        server = self.server
        queued_at = monotonic()
        try:
            w = await server.pool.acquire(preferred, strict)
        except WorkerGone:
            self.task = None
            return self._answer(errors.WORKER_GONE, worker=preferred)
        except QueueFull:
            self.task = None
            return self._answer(errors.QUEUE_FULL, queued=server.pool.queued)
        except NoWorkerInTime as exc:
            waited = monotonic() - queued_at
            server.metrics.observe_wait(waited)
            self.task = None
            detail, retry = errors.no_worker(exc.why, exc.retry_after,
                                             server.wait_timeout if waited >= server.wait_timeout else None)
            return self._answer(errors.NO_WORKER, ((b"Retry-After", b"%d" % retry),), detail=detail)
        except ShuttingDown:
            self.task = None
            return self._answer(errors.SHUTTING_DOWN, _RETRY_SOON)
        server.metrics.observe_wait(monotonic() - queued_at)
        self.task = None
        if self.state is DONE:  # cannot happen (every ending cancels the task); never keep a slot regardless
            server.pool.release(w)
        else:
            self._forward(w)

    def _forward(self, w: Worker) -> None:
        server = self.server
        self.worker = w
        self.worker_id = w.id.encode()
        self.state = CONNECTING
        now = monotonic()
        if server.execution_timeout:
            self.deadline = now + server.execution_timeout
        if self.expect_continue and not self.received:
            self.expect_continue = False
            self.conn.transport.write(CONTINUE)
        ep = server.upstream.endpoint(w)
        c = server.upstream.take(ep, now)
        if c is None:
            self.task = asyncio.get_running_loop().create_task(self._guarded(self._connect(ep)))
        else:
            self._attach(c)

    async def _connect(self, ep: Endpoint) -> None:
        try:
            c = await self.server.upstream.connect(ep)
        except NotSent as exc:
            self.task = None
            if self.resend_by:  # sending again after a reused connection failed: the worker is gone, not another
                return self._worker_failed(exc)
            return self._not_sent(exc)
        except TimeoutError:
            self.task = None
            return self._worker_failed(TimeoutError(f"no connection to {ep.worker.authority} within "
                                                    f"{CONNECT_TIMEOUT:g}s"))
        self.task = None
        if self.state is CONNECTING:
            self._attach(c)
        else:
            c.close()

    def _not_sent(self, exc: NotSent) -> None:
        """Nothing reached the worker: take it out of rotation and try another, at most twice more."""
        if out_of_descriptors(exc):
            self.deadline = float("inf")
            return self._answer(errors.OVERLOADED, _RETRY_SOON)
        w = self.worker
        if w is not None and w.state is WorkerState.READY:
            log.warning("worker %s unreachable (%s): taken out of rotation", w.id, exc.__cause__ or exc)
            self.server.pool.set_state(w, WorkerState.UNHEALTHY, "connection refused")
        self._release()
        self.deadline = float("inf")
        self.attempt += 1
        if self.attempt > MAX_CONNECT_RETRIES or self.strict:  # strict: no other worker may take it
            return self._answer(errors.WORKER_FAILED, detail=str(exc.__cause__ or exc))
        self._reserve(None)

    def _attach(self, c: UpstreamConnection) -> None:
        """Send the head and whatever body arrived meanwhile; the rest streams from ``request_body``."""
        self.upstream = c
        c.sink = self
        self.state = FORWARDING
        if self.conn.writing_paused:
            c.pause_reading()
        data = self.resend
        if data is None:
            parts = [self.method, b" ", self.url, b" HTTP/1.1\r\n", c.endpoint.host_line, self.tail]
            if self.body:
                parts += self.body
                self.body = None
                self.buffered = 0
            if self.request_done and self.chunked:
                parts.append(LAST_CHUNK)
            data = b"".join(parts)
            if c.reused and self.request_done and self.method in IDEMPOTENT:
                self.resend, self.resend_by = data, monotonic() + RESEND_WINDOW
        else:
            self.resend = None  # the second and last attempt
        c.transport.write(data)
        if not c.writing_paused:
            self.conn.unblock(BODY_FLAG)

    # -- the request body (from the client's parser) ---------------------------------------------

    def request_body(self, data: bytes) -> None:
        if self.state is DONE or self.error is not None:
            return  # answered already: the body is read and dropped
        self.received += len(data)
        if self.received > self.server.max_body:
            return self._too_large()
        c = self.upstream
        if c is not None:
            if self.chunked:
                c.transport.writelines(framing.chunk(data))
            else:
                c.transport.write(data)
            return
        if self.body is None:
            self.body = []
        if self.chunked:
            self.body += framing.chunk(data)
        else:
            self.body.append(data)
        self.buffered += len(data)
        if self.buffered > BODY_BUFFER:
            self.conn.block(BODY_FLAG)

    def request_complete(self) -> None:
        self.request_done = True
        c = self.upstream
        if c is not None and self.chunked and self.state is FORWARDING:
            c.transport.write(LAST_CHUNK)

    def request_malformed(self, detail: str) -> None:
        """The body broke the HTTP framing: the worker gets a truncated request, the client a 400 and a close."""
        self.close_after = True
        if self.state is not DONE:
            self._fail(MALFORMED, (), detail=detail)

    def _too_large(self) -> None:
        self.close_after = True
        self._fail(errors.BODY_TOO_LARGE, (), limit=self.server.max_body)

    # -- the response (from the worker connection's parser) --------------------------------------

    def response_head(self, status: int, reason: bytes, headers: list[Header], keep_alive: bool) -> int:
        self.status = status
        self.out, self.mode, self.client_keep, framed = framing.response_head(
            status, reason, headers, head_request=self.head_request, http10=self.http10,
            # A response before the whole request body (an early answer) ends the connection: say so up front.
            keep_alive=self.keep_alive and self.request_done and not self.close_after and not self.server.closing,
            worker_id=self.worker_id, rid=self.rid)
        if self.head_request:
            return SKIP_BODY
        return FRAMED if framed else UNTIL_CLOSE

    def response_body(self, data: bytes) -> None:
        t = self.conn.transport
        out = self.out
        if self.mode == CHUNKED:
            if out is None:
                t.writelines(framing.chunk(data))
            else:
                self.out = None
                t.writelines((out, *framing.chunk(data)))
        elif out is None:
            t.write(data)
        else:
            self.out = None
            if len(data) < 8192:
                t.write(out + data)  # a small copy is cheaper than a vectored write
            else:
                t.writelines((out, data))

    def response_flush(self) -> None:
        """The end of what the worker sent for now: the head goes out even before any body (streams, SSE)."""
        out = self.out
        if out is not None:
            self.out = None
            self.conn.transport.write(out)

    def response_complete(self, reusable: bool) -> None:
        out = self.out
        self.out = None
        t = self.conn.transport
        if self.mode == CHUNKED:
            t.write(out + LAST_CHUNK if out is not None else LAST_CHUNK)
        elif out is not None:
            t.write(out)
        c = self.upstream
        self.upstream = None
        if c is not None:
            c.sink = None
            if reusable and self.request_done:
                c.resume_reading()
                self.server.upstream.put(c, monotonic())
            else:
                c.close()
        self._finish(self.client_keep and self.request_done)

    def upstream_failed(self, exc: BaseException) -> None:
        """The worker connection failed. A reused one that fails before any response byte, right after the
        request went out, was most likely closed by the worker as idle at that moment (a race no check can
        close): an idempotent request sent whole goes again once, on a new connection to the same worker, as
        nginx and Go's net/http do. Later, the worker may have been working on it: no second time then."""
        w = self.worker
        if (self.resend is not None and self.status == 0 and self.state is FORWARDING and w is not None
                and monotonic() <= self.resend_by):
            c = self.upstream
            self.upstream = None
            if c is not None:
                c.close()
            self.state = CONNECTING
            ep = self.server.upstream.endpoint(w)
            self.task = asyncio.get_running_loop().create_task(self._guarded(self._connect(ep)))
            return
        self._worker_failed(exc)

    def upstream_writable(self, writable: bool) -> None:
        if writable:
            self.conn.unblock(BODY_FLAG)
        elif not self.request_done:
            self.conn.block(BODY_FLAG)

    def client_writable(self, writable: bool) -> None:
        """The client's socket buffer is over (or back under) its high-water mark: pace the worker."""
        c = self.upstream
        if c is not None:
            if writable:
                c.resume_reading()
            else:
                c.pause_reading()

    # -- endings ---------------------------------------------------------------------------------

    def _worker_failed(self, exc: BaseException) -> None:
        self.failed = True
        w = self.worker
        c = self.upstream
        if (self.status == 0 and w is not None and w.state is WorkerState.READY and self.state is not DONE
                and (c is None or not c.reused)):  # a reused connection's failure may be the idle-close race
            # Failed before any response (as the aiohttp engine): out of rotation now, or the slot this frees
            # goes to a queued request on a worker that is dying; /ping brings it back if it is fine.
            log.warning("worker %s failed before answering (%s): taken out of rotation", w.id, _describe(exc))
            self.server.pool.set_state(w, WorkerState.UNHEALTHY, "failed a request")
        self._fail(errors.WORKER_FAILED, ((b"X-Lbproxy-Worker-Id", self.worker_id), (b"X-Request-Id", self.rid)),
                   detail=_describe(exc))

    def timeout(self) -> None:
        """``timeouts.execution`` passed: 504, or a cut connection when the response has started."""
        self._fail(errors.EXECUTION_TIMEOUT, ((b"X-Lbproxy-Worker-Id", self.worker_id), (b"X-Request-Id", self.rid)),
                   timeout=self.server.execution_timeout or 0)

    def _fail(self, err: ProxyError, headers: tuple[Header, ...], **details: object) -> None:
        if self.state is DONE:
            return
        if self.state is QUEUED:  # not its turn yet (pipelined): answered in order, by start()
            self.body = None
            self.error = (err, headers, details)
            return
        if self.status == 0 or self.out is not None:  # nothing of the response left yet: answer instead
            self.out = None
            return self._answer(err, headers, **details)
        log.warning("%s %s: %s after the response started; closing the client connection",
                    self.method.decode("latin-1"), self.url.split(b"?", 1)[0].decode("latin-1"),
                    details.get("detail") or err.code)
        self._drop_upstream()
        self.close_after = True
        self._finish(False)
        reset(self.conn.transport)  # not a FIN after a flush: a client that stopped reading would hold it

    def _answer(self, err: ProxyError, headers: tuple[Header, ...] = (), **details: object) -> None:
        """lbproxy's own JSON error, instead of the worker's response."""
        self._drop_upstream()
        keep = (self.keep_alive and self.request_done and not self.close_after and err is not errors.BODY_TOO_LARGE
                and not self.server.closing)
        self.status = err.status
        self.conn.transport.write(framing.error_response(err, http10=self.http10, close=not keep, headers=headers,
                                                         head_request=self.head_request, **details))
        self._finish(keep)

    def _finish(self, keep: bool) -> None:
        self.state = DONE
        self._release()
        self.server.metrics.observe_request(self.status, monotonic() - self.started)
        self.conn.exchange_done(self, keep)

    def client_lost(self) -> None:
        """The client went away: the worker connection is not reusable mid-exchange, the slot is freed."""
        if self.state is not DONE:
            self.state = DONE
            self._drop_upstream()
            self._release()

    def _drop_upstream(self) -> None:
        task = self.task
        if task is not None:
            self.task = None
            task.cancel()
        c = self.upstream
        if c is not None:
            self.upstream = None
            c.close()
        self.deadline = float("inf")

    def _release(self) -> None:
        w = self.worker
        if w is not None:
            self.worker = None
            self.server.pool.release(w, self.failed)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
