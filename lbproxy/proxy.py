"""The proxy: forwards every request (HTTP or WebSocket) to a ready worker, streaming both ways.

The pipeline per request: auth -> request id -> body limit -> reserve a worker slot (or queue) ->
forward with the execution timeout -> release the slot on every path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import WSMsgType, web
from yarl import URL

from . import errors
from .auth import ApiKeys
from .config import Config
from .headers import (
    AUTHORIZATION,
    REQUEST_ID,
    WORKER_ID,
    downstream_response_headers,
    request_id,
    upstream_request_headers,
)
from .metrics import Metrics
from .policy import WorkerState
from .pool import NoWorkerInTime, QueueFull, ShuttingDown, Worker, WorkerGone, WorkerPool
from .routing import parse_affinity
from .sockets import out_of_descriptors, reset

log = logging.getLogger("lbproxy.proxy")

MAX_CONNECT_RETRIES = 2
# Below the 5 s keep-alive timeout of common Python servers (uvicorn, gunicorn), so a pooled connection is
# dropped by us before the worker closes it under a request we are sending.
UPSTREAM_KEEPALIVE = 4.0
_NO_BODY_STATUSES = frozenset({204, 304})


class _NotSent(Exception):
    """The worker could not be reached: nothing of the request was sent, so another worker may take it."""


class _Exchange:
    """Per-request state the body generator and the error paths share."""

    __slots__ = ("body_too_large", "response")

    def __init__(self) -> None:
        self.body_too_large = False
        self.response: web.StreamResponse | None = None


class Proxy:
    """The aiohttp handler of the public port."""

    def __init__(self, config: Config, pool: WorkerPool, metrics: Metrics) -> None:
        self.pool = pool
        self.metrics = metrics
        self.keys = ApiKeys(config.auth.keys())
        self.drop_authorization = self.keys.enabled and not config.auth.forward_authorization
        self.execution_timeout = config.timeouts.execution
        self.wait_timeout = config.timeouts.wait
        self.max_body = config.limits.max_body_size
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=UPSTREAM_KEEPALIVE, use_dns_cache=False),
            auto_decompress=False,  # bytes pass through as the worker sent them
            # Send only the client's headers: no User-Agent/Accept/Content-Type made up by the client library.
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        # aiohttp silently resends an idempotent request when a reused keep-alive connection drops under it.
        # The worker may already have run it (a GET can start a generation), and lbproxy promises to retry
        # only what never left. No public switch exists; aiohttp's own test_utils flips the same attribute.
        if hasattr(self.session, "_retry_connection"):
            self.session._retry_connection = False

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    # -- entry point -------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        resp = await self._handle(request)
        self.metrics.observe_request(resp.status, time.monotonic() - started)
        return resp

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        headers = request.headers
        if not self.keys.allows(headers.get(AUTHORIZATION)):
            return errors.error_response(errors.UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
        if not request.raw_path.startswith("/"):
            return errors.error_response(errors.BAD_REQUEST)
        rid = request_id(headers)
        if request.method == "GET" and headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, rid)
        length = request.content_length
        if length is not None and length > self.max_body:
            return errors.error_response(errors.BODY_TOO_LARGE, {"Connection": "close"}, limit=self.max_body)

        preferred, strict = parse_affinity(headers.get(WORKER_ID))
        worker, failed = await self._reserve(preferred, strict)
        if worker is None:
            return failed or errors.error_response(errors.NO_WORKER, detail="no worker was free")
        exchange = _Exchange()
        body = self._body(request, exchange) if request.body_exists else None
        attempt = 0
        while True:
            try:
                return await self._forward(request, worker, rid, body, exchange)
            except _NotSent as exc:
                if out_of_descriptors(exc):
                    return errors.error_response(errors.OVERLOADED, {"Retry-After": "1"})
                # Connection refused: nothing reached the worker, so another one may take the request.
                self._suspect(worker, exc)
                attempt += 1
                if attempt > MAX_CONNECT_RETRIES or strict:
                    return errors.error_response(errors.WORKER_FAILED, detail=str(exc.__cause__ or exc))
            finally:
                self.pool.release(worker)
            worker, failed = await self._reserve(None)
            if worker is None:
                return failed or errors.error_response(errors.NO_WORKER, detail="no worker was free")

    async def _reserve(self, preferred: str | None, strict: bool = False
                       ) -> tuple[Worker | None, web.Response | None]:
        """A worker slot, or the error response that says why there is none."""
        w = self.pool.try_acquire(preferred, strict)
        if w is not None:
            return w, None
        queued_at = time.monotonic()
        try:
            w = await self.pool.acquire(preferred, strict)
        except WorkerGone:
            return None, errors.error_response(errors.WORKER_GONE, worker=preferred)
        except QueueFull:
            return None, errors.error_response(errors.QUEUE_FULL, queued=self.pool.queued)
        except NoWorkerInTime as exc:
            waited = time.monotonic() - queued_at
            self.metrics.observe_wait(waited)
            detail, retry = errors.no_worker(exc.why, exc.retry_after,
                                             self.wait_timeout if waited >= self.wait_timeout else None)
            return None, errors.error_response(errors.NO_WORKER, {"Retry-After": str(retry)}, detail=detail)
        except ShuttingDown:
            return None, errors.error_response(errors.SHUTTING_DOWN, {"Retry-After": "1"})
        self.metrics.observe_wait(time.monotonic() - queued_at)
        return w, None

    def _suspect(self, w: Worker, exc: Exception) -> None:
        """A worker that refuses connections gets no more requests until /ping says it is back."""
        if w.state is WorkerState.READY:
            log.warning("worker %s unreachable (%s): taken out of rotation", w.id, exc.__cause__ or exc)
            self.pool.set_state(w, WorkerState.UNHEALTHY, "connection refused")

    async def _body(self, request: web.Request, exchange: _Exchange) -> AsyncIterator[bytes]:
        """The request body as it arrives, cut off at ``limits.max_body_size``."""
        limit = self.max_body
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
            if total > limit:
                exchange.body_too_large = True
                raise ValueError("request body over limits.max_body_size")
            yield chunk

    # -- HTTP --------------------------------------------------------------------------------------

    async def _forward(
        self,
        request: web.Request,
        w: Worker,
        rid: str,
        body: AsyncIterator[bytes] | None,
        exchange: _Exchange,
    ) -> web.StreamResponse:
        assert self.session is not None
        url = URL(f"http://{w.authority}{request.raw_path}", encoded=True)
        headers = upstream_request_headers(
            request.headers, peer=request.remote, scheme=request.scheme, host=request.host, rid=rid,
            drop_authorization=self.drop_authorization,
        )
        try:
            async with asyncio.timeout(self.execution_timeout):
                try:
                    upstream = await self.session.request(
                        request.method, url, headers=headers, data=body, allow_redirects=False,
                    )
                except aiohttp.ClientConnectorError as exc:
                    raise _NotSent(str(exc)) from exc
                async with upstream:
                    resp = web.StreamResponse(
                        status=upstream.status, reason=upstream.reason,
                        headers=downstream_response_headers(upstream.headers, w.id, rid),
                    )
                    exchange.response = resp
                    await resp.prepare(request)
                    if request.method != "HEAD" and upstream.status not in _NO_BODY_STATUSES:
                        async for chunk in upstream.content.iter_any():
                            await resp.write(chunk)
                    await resp.write_eof()
                    return resp
        except TimeoutError:
            if exchange.response is None:
                return errors.error_response(errors.EXECUTION_TIMEOUT, {WORKER_ID: w.id, REQUEST_ID: rid},
                                             timeout=self.execution_timeout or 0)
            return self._abort(request, exchange.response, "execution timeout mid-response")
        except (aiohttp.ClientError, ValueError) as exc:
            if exchange.body_too_large:
                return errors.error_response(errors.BODY_TOO_LARGE, {"Connection": "close"}, limit=self.max_body)
            if exchange.response is None:
                # Failed before any response: take it out of rotation now, or the slots this frees hand queued
                # requests to a worker that is dying; /ping brings it back if it is fine.
                self._suspect(w, exc)
                return errors.error_response(errors.WORKER_FAILED, {WORKER_ID: w.id, REQUEST_ID: rid},
                                             detail=_describe(exc))
            if request.transport is None or request.transport.is_closing():  # the client left: not the worker
                log.debug("%s %s: the client went away mid-response", request.method, request.path)
                return exchange.response
            return self._abort(request, exchange.response, f"worker failed mid-response: {_describe(exc)}")

    @staticmethod
    def _abort(request: web.Request, resp: web.StreamResponse, why: str) -> web.StreamResponse:
        """The status line is gone already: cut the connection so the client sees a truncated response."""
        log.warning("%s %s: %s; closing the client connection", request.method, request.path, why)
        if request.transport is not None:
            reset(request.transport)  # not close(): that would first flush what a slow reader never reads
        return resp

    # -- WebSocket ---------------------------------------------------------------------------------

    async def _websocket(self, request: web.Request, rid: str) -> web.StreamResponse:
        assert self.session is not None
        worker, failed = await self._reserve(*parse_affinity(request.headers.get(WORKER_ID)))
        if worker is None:
            return failed or errors.error_response(errors.NO_WORKER, detail="no worker was free")
        try:
            headers = upstream_request_headers(
                request.headers, peer=request.remote, scheme=request.scheme, host=request.host, rid=rid,
                drop_authorization=self.drop_authorization, websocket=True,
            )
            protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                         if p.strip()]
            url = URL(f"http://{worker.authority}{request.raw_path}", encoded=True)
            try:
                upstream = await self.session.ws_connect(
                    url, headers=headers, protocols=protocols, max_msg_size=0, compress=0,
                )
            except aiohttp.WSServerHandshakeError as exc:
                return web.json_response(
                    {"error": "upgrade_rejected", "message": f"the worker refused the WebSocket upgrade "
                                                            f"({exc.status} {exc.message})"},
                    status=exc.status if exc.status >= 400 else 502,
                    headers={WORKER_ID: worker.id, REQUEST_ID: rid},
                )
            except aiohttp.ClientError as exc:
                self._suspect(worker, exc)
                return errors.error_response(errors.WORKER_FAILED, detail=_describe(exc))
            ws = web.WebSocketResponse(
                protocols=(upstream.protocol,) if upstream.protocol else (), max_msg_size=0, compress=False,
            )
            ws.headers[WORKER_ID] = worker.id
            ws.headers[REQUEST_ID] = rid
            async with upstream:
                await ws.prepare(request)
                try:
                    async with asyncio.timeout(self.execution_timeout):
                        await asyncio.gather(_pump(ws, upstream), _pump(upstream, ws))
                except TimeoutError:
                    msg = b"execution timeout"
                    await asyncio.gather(ws.close(code=1011, message=msg), upstream.close(code=1011, message=msg),
                                         return_exceptions=True)
            return ws
        finally:
            self.pool.release(worker)


async def _pump(
    src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
) -> None:
    """Copy messages from ``src`` to ``dst`` until ``src`` closes, then close ``dst`` with the same code."""
    while True:
        msg = await src.receive()
        kind = msg.type
        if kind is WSMsgType.TEXT:
            await dst.send_str(msg.data)
        elif kind is WSMsgType.BINARY:
            await dst.send_bytes(msg.data)
        elif kind is WSMsgType.CLOSE:
            await dst.close(code=msg.data, message=(msg.extra or "").encode())
            return
        elif kind in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            code = src.close_code or (1011 if kind is WSMsgType.ERROR else 1000)
            await dst.close(code=code)
            return


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
