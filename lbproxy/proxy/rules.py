"""What the proxy admits, and what a worker's failure means for the request: pure functions of values.

Admission runs on every request head, in this order (README, "Errors"): auth (401), the target (400), the
framing (400), the body limit by Content-Length (413), Expect (417). What follows a worker failure depends on
whether anything of the request could have reached the worker, and whether it may be sent twice (RFC 9110
9.2.2): see ``after_failure``.
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from . import errors
from .errors import ProxyError
from .framing import Header, RequestInfo
from .settings import ProxySettings

# A request nothing of which reached a worker (connection refused) goes to another worker, this many times more.
MAX_CONNECT_RETRIES = 2
# Requests a client may expect to be sent twice (RFC 9110 9.2.2): the idle-close race is retried for them.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# After sending, a failure this soon on a reused connection is taken for the worker closing it as idle just
# then (nginx and Go's net/http retry it too); later the worker may have acted on the request.
RESEND_WINDOW = 0.5
_UNAUTHORIZED = ((b"WWW-Authenticate", b"Bearer"),)


class Rejection(NamedTuple):
    error: ProxyError
    headers: tuple[Header, ...] = ()
    close: bool = False  # the connection cannot go on (its framing is unknown, or a body is unread)
    details: dict[str, object] = {}


def admit(method: bytes, url: bytes, info: RequestInfo, settings: ProxySettings) -> Rejection | None:
    """Why the request must be answered by lbproxy instead of a worker, or None."""
    keys = settings.keys
    if keys.enabled and not keys.allows(
            info.authorization.decode("utf-8", "surrogateescape") if info.authorization is not None else None):
        return Rejection(errors.UNAUTHORIZED, _UNAUTHORIZED)
    if not url.startswith(b"/"):
        return Rejection(errors.BAD_TARGET)
    if info.transfer_encoding is not None and info.transfer_encoding.strip().lower() != b"chunked":
        return Rejection(errors.MALFORMED, close=True,
                         details={"detail": "only 'Transfer-Encoding: chunked' is supported"})
    if info.length is not None and info.length > settings.max_body:
        return Rejection(errors.BODY_TOO_LARGE, close=True, details={"limit": settings.max_body})
    if info.expect is not None and info.expect != b"100-continue":
        return Rejection(errors.EXPECTATION_FAILED)
    return None


class AfterFailure(Enum):
    """What to do with a request whose worker connection failed before any byte of a response."""

    ELSEWHERE = "another worker"  # nothing reached the worker: another one takes it
    AGAIN = "again, same worker"  # the idle-close race on a reused connection: once more, on a new connection
    GIVE_UP = "502"  # the worker may have acted on it: the client decides


def after_failure(*, connected: bool, reused: bool, method: bytes, sent_whole: bool, since_sent: float,
                  resent: bool) -> AfterFailure:
    """A failure before any response byte.

    ``connected``: a connection was made (else it was refused: nothing was sent, or, when ``resent``, the
    idempotent request's second attempt found the worker gone: another worker takes it). ``resent``: this was
    already the second attempt.
    """
    if not connected:
        return AfterFailure.ELSEWHERE
    if reused and not resent and sent_whole and method in IDEMPOTENT and since_sent <= RESEND_WINDOW:
        return AfterFailure.AGAIN
    return AfterFailure.GIVE_UP
