"""Errors lbproxy answers itself: a stable code, a status a client can act on, a sentence saying what to do."""

from __future__ import annotations

import json
import math
from typing import NamedTuple

from aiohttp import web


class ProxyError(NamedTuple):
    status: int
    code: str
    message: str


UNAUTHORIZED = ProxyError(401, "unauthorized", "send a valid API key as 'Authorization: Bearer <key>'")
BAD_REQUEST = ProxyError(400, "bad_request", "the request target must be an origin-form path starting with '/'")
BODY_TOO_LARGE = ProxyError(
    413, "body_too_large", "the request body is larger than limits.max_body_size ({limit} bytes)"
)
WORKER_GONE = ProxyError(
    404, "worker_gone", "worker {worker} is gone or leaving; send the request without 'strict' to use another"
)
QUEUE_FULL = ProxyError(429, "queue_full", "{queued} requests are already waiting for a worker; retry later")
WORKER_FAILED = ProxyError(502, "worker_failed", "the worker failed while handling the request: {detail}")
NO_WORKER = ProxyError(503, "no_worker", "{detail}; retry later")
RETRY_AFTER_DEFAULT = 5  # seconds, in Retry-After when nothing better is known (no worker starting)
OVERLOADED = ProxyError(503, "overloaded", "lbproxy has no file descriptor left for this request; retry later")
SHUTTING_DOWN = ProxyError(503, "shutting_down", "the endpoint is shutting down; retry on another replica")
EXECUTION_TIMEOUT = ProxyError(
    504, "execution_timeout", "the worker did not finish within timeouts.execution ({timeout:g}s)"
)

_JSON = "application/json"


def no_worker(why: str, retry_after: float | None, waited: float | None) -> tuple[str, int]:
    """The ``detail`` of a 503 ``no_worker`` and its Retry-After seconds: what is known about why no worker took
    the request (starts failing, workers still loading) and when one may (a starting worker's expected rest)."""
    if waited is None:  # failed at once: workers are failing to start and none is tried before the back-off ends
        detail = f"no worker can take the request now: {why}"
    else:
        detail = f"no worker was free within timeouts.wait ({waited:g}s)" + (f": {why}" if why else "")
    retry = RETRY_AFTER_DEFAULT if retry_after is None else max(1, math.ceil(retry_after))
    return detail, retry


def error_response(err: ProxyError, headers: dict[str, str] | None = None, **details: object) -> web.Response:
    """A JSON ``{"error": code, "message": ...}`` response."""
    message = err.message.format(**details) if details else err.message
    body = json.dumps({"error": err.code, "message": message}).encode()
    return web.Response(status=err.status, body=body, content_type=_JSON, headers=headers)
