"""JSON errors for both queue APIs: a stable code, a sentence, and the ``status`` the SDK reads."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .answers import error_body

log = logging.getLogger("lbproxy.queue")

_STATUS_NAMES = {400: "BAD_REQUEST", 401: "UNAUTHORIZED", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
                 409: "CONFLICT", 413: "BODY_TOO_LARGE", 429: "TOO_MANY_REQUESTS", 500: "ERROR",
                 503: "UNAVAILABLE"}


def json_answer(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json")


def json_error(status: int, code: str, message: str, job_status: str | None = None) -> web.Response:
    """``job_status``: the job's state when the error is about a job that exists (e.g. retry of a COMPLETED one)."""
    return json_answer(error_body(code, message, job_status or _STATUS_NAMES.get(status, "ERROR")), status)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (no route, wrong method, body over client_max_size) as JSON too."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge as exc:
        return json_error(413, "body_too_large", f"the body is over the limit ({exc.text})")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status, "bad_request")
        return json_error(exc.status, code, f"{request.method} {request.path}: {exc.reason}")
