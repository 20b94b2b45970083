"""Errors lbproxy answers itself: a stable code, a status a client can act on, a sentence saying what to do,
rendered to the bytes of a whole HTTP/1.1 response. Pure: no I/O.

Every one is JSON ``{"error": CODE, "message": ...}`` with ``X-Request-Id`` (README, "Errors").
"""

from __future__ import annotations

import json
import math
from http import HTTPStatus
from typing import NamedTuple

from .framing import CRLF, Header, http_date, status_line


class ProxyError(NamedTuple):
    status: int
    code: str
    message: str


UNAUTHORIZED = ProxyError(401, "unauthorized", "send a valid API key as 'Authorization: Bearer <key>'")
BAD_TARGET = ProxyError(400, "bad_request", "the request target must be an origin-form path starting with '/'")
MALFORMED = ProxyError(400, "bad_request", "the request is not valid HTTP/1.1: {detail}")
BODY_TOO_LARGE = ProxyError(
    413, "body_too_large", "the request body is larger than limits.max_body_size ({limit} bytes)"
)
WORKER_GONE = ProxyError(
    404, "worker_gone", "worker {worker} is gone or leaving; send the request without 'strict' to use another"
)
EXPECTATION_FAILED = ProxyError(417, "expectation_failed", "only 'Expect: 100-continue' is supported")
QUEUE_FULL = ProxyError(429, "queue_full", "{queued} requests are already waiting for a worker; retry later")
HEAD_TOO_LARGE = ProxyError(431, "headers_too_large", "the request head is larger than {limit} bytes")
WORKER_FAILED = ProxyError(502, "worker_failed", "the worker failed while handling the request: {detail}")
NO_WORKER = ProxyError(503, "no_worker", "{detail}; retry later")
OVERLOADED = ProxyError(503, "overloaded", "lbproxy has no file descriptor left for this request; retry later")
SHUTTING_DOWN = ProxyError(503, "shutting_down", "the endpoint is shutting down; retry on another replica")
EXECUTION_TIMEOUT = ProxyError(
    504, "execution_timeout", "the worker did not finish within timeouts.execution ({timeout:g}s)"
)
RETRY_AFTER_DEFAULT = 5  # seconds, in Retry-After when nothing better is known (no worker starting)

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_bodies: dict[ProxyError, bytes] = {}  # errors without details: rendered once


def body(err: ProxyError, **details: object) -> bytes:
    """The JSON body of ``err``."""
    if not details:
        cached = _bodies.get(err)
        if cached is None:
            cached = _bodies[err] = json.dumps({"error": err.code, "message": err.message}).encode()
        return cached
    return json.dumps({"error": err.code, "message": err.message.format(**details)}).encode()


def response(
    err: ProxyError, *, http10: bool, close: bool, headers: tuple[Header, ...] = (), head_request: bool = False,
    **details: object,
) -> bytes:
    """The whole response; to a HEAD request, the same head and no body (RFC 9110 9.3.2)."""
    content = body(err, **details)
    parts = [status_line(http10, err.status, _REASONS.get(err.status, b"")), b"Content-Type: application/json\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, CRLF)
    parts += (b"Content-Length: %d\r\nDate: " % len(content), http_date(), CRLF)
    if close:
        if not http10:
            parts.append(b"Connection: close\r\n")
    elif http10:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(CRLF)
    if not head_request:
        parts.append(content)
    return b"".join(parts)


def no_worker(why: str, retry_after: float | None, waited: float | None) -> tuple[str, int]:
    """The ``detail`` of a 503 ``no_worker`` and its Retry-After seconds: what is known about why no worker took
    the request (starts failing, workers still loading) and when one may (a starting worker's expected rest).
    ``waited`` None: it failed at once (workers are failing to start and none is tried before the back-off)."""
    if waited is None:
        detail = f"no worker can take the request now: {why}"
    else:
        detail = f"no worker was free within timeouts.wait ({waited:g}s)" + (f": {why}" if why else "")
    return detail, retry_seconds(retry_after)


def retry_seconds(retry_after: float | None) -> int:
    """Whole seconds for Retry-After (at least 1): the estimate when there is one, else the default."""
    return RETRY_AFTER_DEFAULT if retry_after is None else max(1, math.ceil(retry_after))
