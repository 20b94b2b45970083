"""One request and its response: admit it, reserve a worker slot, forward, stream back, release once.

The pipeline (README, "Proxy behaviour"): admission rules -> reserve a slot or queue -> forward under the
execution timeout -> stream the response -> release the slot on every path. The common case (a free slot, a
pooled worker connection) runs without a task; waiting for a slot and connecting run in one. A WebSocket
handshake goes the same way; on the worker's 101 the exchange becomes a byte tunnel (``Tunnel``) that holds
its slot until either side closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from time import monotonic
from typing import Any

from .. import logs
from ..policy import WorkerState
from ..pool import NoWorkerInTime, QueueFull, ShuttingDown, Slot, WorkerGone
from ..routing import parse_affinity
from ..sockets import out_of_descriptors, reset
from . import access, errors, framing, rules
from .errors import ProxyError
from .framing import CHUNKED, CONTINUE, EMPTY, LAST_CHUNK, Header, RequestInfo
from .rules import AfterFailure
from .shared import Shared
from .sides import BODY_FLAG, ClientSide
from .tunnel import Tunnel
from .upstream import CONNECT_TIMEOUT, FRAMED, SKIP_BODY, SWITCH, UNTIL_CLOSE, Endpoint, NotSent, UpstreamConnection

log = logging.getLogger("lbproxy.proxy")

# Request bytes held while no worker connection is ready yet; above it the client is not read.
BODY_BUFFER = 64 * 1024
_RETRY_SOON = ((b"Retry-After", b"1"),)

QUEUED, RESERVING, CONNECTING, FORWARDING, TUNNEL, DONE = range(6)
Details = dict[str, object]


class Exchange:
    __slots__ = ("attempt", "body", "buffered", "chunked", "client_keep", "close_after", "conn", "deadline",
                 "error", "expect_continue", "failed", "head_request", "http10", "keep_alive", "method", "mode",
                 "out", "preferred", "queued_at", "received", "request_done", "resend", "resend_by", "resent",
                 "rid", "sent", "sent_at", "settings", "shared", "slot", "started", "state", "status", "strict",
                 "tail", "task", "tunnel", "upgrade", "upstream", "url", "wait", "worker_id")

    def __init__(self, conn: ClientSide, shared: Shared, started: float, method: bytes, url: bytes, http10: bool,
                 keep_alive: bool) -> None:
        self.conn = conn
        self.shared = shared
        self.settings = shared.settings  # the settings of this request's moment, whatever a reload does later
        self.started = started
        self.method = method
        self.url = url
        self.http10 = http10
        self.keep_alive = keep_alive  # what the client asked for
        self.head_request = method == b"HEAD"
        self.state = QUEUED
        self.error: tuple[ProxyError, tuple[Header, ...], Details] | None = None
        self.close_after = False
        self.upgrade = False  # a WebSocket handshake: tunnelled on the worker's 101
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
        self.slot: Slot | None = None
        self.worker_id = b""
        self.upstream: UpstreamConnection | None = None
        self.tunnel: Tunnel | None = None
        self.task: asyncio.Task[None] | None = None
        self.deadline = float("inf")
        self.attempt = 0
        self.status = 0
        self.mode = EMPTY
        self.out: bytes | None = None  # the response head, held to go out with the first body bytes
        self.client_keep = False
        self.resend: bytes | None = None  # the whole request, while it may be sent once more (see upstream_failed)
        self.resend_by = 0.0  # ... until then
        self.resent = False  # this is the second attempt
        self.sent_at = 0.0
        self.failed = False  # the worker failed this request (counted on it for the log of its exit)
        self.queued_at = 0.0
        self.wait = 0.0  # seconds spent waiting for a slot
        self.sent = 0  # response body bytes to the client (the access log)

    # -- the request head ------------------------------------------------------------------------

    def reject(self, err: ProxyError, headers: tuple[Header, ...] = (), *, close: bool = False, **details: object
               ) -> None:
        """Answer ``err`` when this exchange's turn comes; nothing goes to a worker."""
        self.error = (err, headers, details)
        self.close_after = self.close_after or close

    def prepare(self, info: RequestInfo, upgrade: bool = False) -> None:
        """The admission rules, then the worker-bound head (less its Host line)."""
        self.rid = framing.request_id(info.rid)
        if self.method == b"CONNECT":
            self.close_after = True  # tunnel bytes may follow: never read them as requests
        refused = rules.admit(self.method, self.url, info, self.settings)
        if refused is not None:
            return self.reject(refused.error, refused.headers, close=refused.close, **refused.details)
        self.chunked = info.chunked
        self.upgrade = upgrade
        if info.expect is not None:
            self.expect_continue = not self.http10 and (self.chunked or bool(info.length))
        if info.preferred:
            self.preferred, self.strict = parse_affinity(info.preferred.decode("latin-1"))
        host = info.host if info.host is not None else self.conn.local_host()
        self.tail = framing.upstream_tail(info, peer=self.conn.peer, host=host, rid=self.rid, upgrade=upgrade)

    # -- reserve and connect ---------------------------------------------------------------------

    def start(self) -> None:
        """This exchange's turn: its response is the next one the client gets."""
        if self.error is not None:
            err, headers, details = self.error
            self._answer(err, headers, **details)
        else:
            self._reserve(self.preferred, self.strict)

    def _reserve(self, preferred: str | None, strict: bool = False) -> None:
        slot = self.shared.pool.try_reserve(preferred, strict)
        if slot is not None:
            self._forward(slot)
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
        shared = self.shared
        pool = shared.pool
        self.queued_at = queued_at = monotonic()
        try:
            slot = await pool.reserve(preferred, strict)
        except WorkerGone:
            self.task = None
            return self._answer(errors.WORKER_GONE, worker=preferred)
        except QueueFull:
            self.task = None
            retry = errors.retry_seconds(pool.no_worker().retry_after)
            return self._answer(errors.QUEUE_FULL, ((b"Retry-After", b"%d" % retry),), queued=pool.queued)
        except NoWorkerInTime as exc:
            self.wait += monotonic() - queued_at
            shared.metrics.observe_wait(self.wait)
            self.task = None
            timeout = self.settings.wait_timeout
            detail, retry = errors.no_worker(exc.why, exc.retry_after, timeout if self.wait >= timeout else None)
            return self._answer(errors.NO_WORKER, ((b"Retry-After", b"%d" % retry),), detail=detail)
        except ShuttingDown:
            self.task = None
            return self._answer(errors.SHUTTING_DOWN, _RETRY_SOON)
        self.wait += monotonic() - queued_at
        shared.metrics.observe_wait(self.wait)
        self.task = None
        if self.state is DONE:  # cannot happen (every ending cancels the task); never keep a slot regardless
            slot.release()
        else:
            self._forward(slot)

    def _forward(self, slot: Slot) -> None:
        self.slot = slot
        self.worker_id = slot.worker.id.encode()
        self.state = CONNECTING
        now = monotonic()
        timeout = self.settings.execution_timeout
        if timeout:
            self.deadline = now + timeout
        if self.expect_continue and not self.received:
            self.expect_continue = False
            self.conn.transport.write(CONTINUE)
        upstream = self.shared.upstream
        ep = upstream.endpoint(slot.worker)
        c = None if self.upgrade else upstream.take(ep, now)  # a session gets a connection of its own
        if c is None:
            self.task = asyncio.get_running_loop().create_task(self._guarded(self._connect(ep)))
        else:
            self._attach(c)

    async def _connect(self, ep: Endpoint) -> None:
        try:
            c = await self.shared.upstream.connect(ep)
        except NotSent as exc:
            self.task = None
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
        """The worker refused the connection: nothing reached it (or, for a second attempt, the first died with
        its connection). Out of rotation, and another worker takes the request, at most twice more."""
        if out_of_descriptors(exc):
            self.deadline = float("inf")
            return self._answer(errors.OVERLOADED, _RETRY_SOON)
        self._out_of_rotation(f"unreachable ({exc.__cause__ or exc})", "connection refused")
        self._release()
        self.deadline = float("inf")
        self.attempt += 1
        self.resend = None
        if self.attempt > rules.MAX_CONNECT_RETRIES or self.strict:  # strict: no other worker may take it
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
            if c.reused and self.request_done and self.method in rules.IDEMPOTENT:
                self.resend = data  # kept while it may go once more (the idle-close race, see upstream_failed)
        else:
            self.resend = None  # the second and last attempt
        self.sent_at = monotonic()
        c.transport.write(data)
        if not c.writing_paused:
            self.conn.unblock(BODY_FLAG)

    # -- the request body (from the client's parser) ---------------------------------------------

    def request_body(self, data: bytes) -> None:
        if self.state is DONE or self.error is not None:
            return  # answered already: the body is read and dropped
        self.received += len(data)
        if self.received > self.settings.max_body:
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
            self._fail(errors.MALFORMED, (), detail=detail)

    def _too_large(self) -> None:
        self.close_after = True
        self._fail(errors.BODY_TOO_LARGE, (), limit=self.settings.max_body)

    # -- the response (from the worker connection's parser) --------------------------------------

    def response_head(self, status: int, reason: bytes, headers: list[Header], keep_alive: bool) -> int:
        if self.resent:  # the second attempt answered: it was the idle-close race, the worker is fine
            self._back_in_rotation()
        if status == 101:
            if not self.upgrade:
                return FRAMED  # the parser then reports the switch it was not asked for: a worker failure
            self.status = 101
            self.state = TUNNEL
            self.conn.transport.write(framing.switching_head(reason, headers, worker_id=self.worker_id,
                                                             rid=self.rid))
            c = self.upstream
            assert c is not None
            self.tunnel = Tunnel(self.conn.transport, c)
            self.conn.tunnel(self)
            tail = self.conn.take_tail()
            if tail:
                self.tunnel.from_client(tail)
            return SWITCH
        self.status = status
        self.out, self.mode, self.client_keep, framed = framing.response_head(
            status, reason, headers, head_request=self.head_request, http10=self.http10,
            # A response before the whole request body (an early answer) ends the connection: say so up front.
            keep_alive=self.keep_alive and self.request_done and not self.close_after and not self.upgrade
            and not self.shared.closing,
            worker_id=self.worker_id, rid=self.rid)
        if self.head_request:
            return SKIP_BODY
        return FRAMED if framed else UNTIL_CLOSE

    def response_body(self, data: bytes) -> None:
        t = self.conn.transport
        out = self.out
        self.sent += len(data)
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
                self.shared.upstream.put(c, monotonic())
            else:
                c.close()
        self._finish(self.client_keep and self.request_done)

    def upstream_failed(self, exc: BaseException) -> None:
        """The worker connection failed. Before any response byte (README, "Proxy behaviour"), the worker goes
        out of rotation at once: the slot this frees must not take a queued request to a worker that is dying.
        The one exception is a reused connection failing right after an idempotent request went out whole: the
        worker most likely closed it as idle at that moment (a race no check can close), and the request goes
        once more on a new connection to the same worker; only its answer brings the worker back."""
        if self.status == 0 and self.state is FORWARDING:
            c = self.upstream
            what = rules.after_failure(connected=True, reused=c is not None and c.reused, method=self.method,
                                       sent_whole=self.resend is not None, since_sent=monotonic() - self.sent_at,
                                       resent=self.resent)
            if what is AfterFailure.AGAIN:
                self._out_of_rotation(f"closed a reused connection under a request ({_describe(exc)}); "
                                      f"sending it again", "failed a request")
                self.upstream = None
                if c is not None:
                    c.close()
                self.resent = True
                self.state = CONNECTING
                slot = self.slot
                assert slot is not None
                ep = self.shared.upstream.endpoint(slot.worker)
                self.task = asyncio.get_running_loop().create_task(self._guarded(self._connect(ep)))
                return
        self._worker_failed(exc)

    def upstream_writable(self, writable: bool) -> None:
        if writable:
            self.conn.unblock(BODY_FLAG)
        elif not self.request_done or self.state is TUNNEL:
            self.conn.block(BODY_FLAG)

    def client_writable(self, writable: bool) -> None:
        """The client's socket buffer is over (or back under) its high-water mark: pace the worker."""
        c = self.upstream
        if c is not None:
            if writable:
                c.resume_reading()
            else:
                c.pause_reading()

    # -- a WebSocket session -----------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.from_client(data)

    def from_worker(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.from_worker(data)

    def worker_closed(self) -> None:
        """The worker ended the session: the client gets what is buffered, then a close."""
        self.upstream = None
        self._finish(False)

    # -- endings ---------------------------------------------------------------------------------

    def _out_of_rotation(self, what: str, reason: str) -> None:
        slot = self.slot
        if slot is not None and slot.worker.state is WorkerState.READY:
            w = slot.worker
            log.warning("worker %s %s: taken out of rotation", w.id, what)
            self.shared.pool.set_state(w, WorkerState.UNHEALTHY, reason)

    def _back_in_rotation(self) -> None:
        self.resent = False
        slot = self.slot
        if slot is not None and slot.worker.state is WorkerState.UNHEALTHY and slot.worker.reason == "failed a request":
            log.info("worker %s answered the request sent again: back in rotation", slot.worker.id)
            self.shared.pool.set_state(slot.worker, WorkerState.READY, "answered again")

    def _worker_failed(self, exc: BaseException) -> None:
        self.failed = True
        if self.status == 0 and self.state is not DONE:
            self._out_of_rotation(f"failed before answering ({_describe(exc)})", "failed a request")
        self._fail(errors.WORKER_FAILED, ((b"X-Lbproxy-Worker-Id", self.worker_id),), detail=_describe(exc))

    def timeout(self) -> None:
        """``timeouts.execution`` passed: 504, a cut connection when the response has started, or for a WebSocket
        session close frames (1011) to both ends and a cut."""
        tunnel = self.tunnel
        if tunnel is not None:
            self.deadline = float("inf")
            tunnel.timeout()
            return self._finish(False)
        self._fail(errors.EXECUTION_TIMEOUT, ((b"X-Lbproxy-Worker-Id", self.worker_id),),
                   timeout=self.settings.execution_timeout or 0)

    def cut(self) -> bool:
        """Shutdown's grace is over: a request with no response byte yet gets 503 ``shutting_down`` (True); one
        whose response started is cut (False)."""
        if self.state is DONE:
            return False
        if self.status == 0 or self.out is not None:
            self.close_after = True
            self._answer(errors.SHUTTING_DOWN, _RETRY_SOON)
            return True
        self.close_after = True
        self._drop_upstream()
        self._finish(False)
        reset(self.conn.transport)
        return False

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
                and not self.upgrade and not self.shared.closing)
        self.status = err.status
        rid = self.rid or framing.request_id(None)  # a request refused before its head was read has none yet
        self.conn.transport.write(errors.response(err, http10=self.http10, close=not keep,
                                                  headers=(*headers, (b"X-Request-Id", rid)),
                                                  head_request=self.head_request, **details))
        self._finish(keep)

    def _finish(self, keep: bool) -> None:
        self.state = DONE
        self._release()
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            self.sent = tunnel.to_client
            tunnel.close()
        shared = self.shared
        duration = monotonic() - self.started
        shared.metrics.observe_request(self.status, duration)
        if self.settings.access_log:
            text, fields = access.entry(self.method, self.url, self.status, self.worker_id, self.wait, duration,
                                        self.sent, self.rid)
            logs.access(text, fields)
        self.conn.exchange_done(self, keep)

    def client_lost(self) -> None:
        """The client went away: the worker connection is not reusable mid-exchange, the slot is freed."""
        if self.state is TUNNEL:  # the usual end of a WebSocket session: counted and logged as one
            self._drop_upstream()
            self._finish(False)
        elif self.state is not DONE:
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
        slot = self.slot
        if slot is not None:
            self.slot = None
            slot.release(self.failed)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
