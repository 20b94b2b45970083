"""HTTP/1.1 framing on raw bytes: the header rules (hop-by-hop, X-Forwarded-*, request ids) and heads.

Pure functions: no I/O, no asyncio. Header names are compared lowercased; values pass through byte for byte.
"""

from __future__ import annotations

import os
import time
from email.utils import formatdate

# RFC 9110 7.6.1 plus the de-facto ones (Keep-Alive, Proxy-Connection): never forwarded.
HOP_BY_HOP: frozenset[bytes] = frozenset({
    b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"proxy-connection", b"te",
    b"trailer", b"transfer-encoding", b"upgrade",
})
# Never dropped because ``Connection`` names them: the body is framed by them, and dropping one while the
# body passes through unchanged would let a client desynchronise the worker connection (request smuggling).
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
# ``Connection`` tokens that name nothing still forwarded (``Connection: keep-alive`` on every response).
_INERT_TOKENS = HOP_BY_HOP | _FRAMING | {b"close", b""}

# What lbproxy does with a header, by lowercased name; a name not listed is forwarded as it is. One dict
# lookup per header: this runs for every header of every request and response.
_DROP, _AUTH, _LENGTH, _TE, _CONNECTION, _UPGRADE, _EXPECT, _RID, _WORKER, _XFF, _HOST, _DATE, _TYPE = range(13)
# Host is set for the worker, Expect is answered here (100 Continue), X-Forwarded-For and X-Request-Id are
# rewritten: the client's values are read from the head, then sent once, last.
_REQUEST_KINDS: dict[bytes, int] = {h: _DROP for h in HOP_BY_HOP} | {
    b"authorization": _AUTH, b"content-length": _LENGTH, b"transfer-encoding": _TE,
    b"connection": _CONNECTION, b"upgrade": _UPGRADE, b"expect": _EXPECT, b"x-request-id": _RID,
    b"x-lbproxy-worker-id": _WORKER, b"x-forwarded-for": _XFF, b"host": _HOST,
}
_RESPONSE_KINDS: dict[bytes, int] = {h: _DROP for h in HOP_BY_HOP} | {
    b"content-length": _LENGTH, b"transfer-encoding": _TE, b"connection": _CONNECTION, b"date": _DATE,
    b"content-type": _TYPE, b"x-lbproxy-worker-id": _DROP, b"x-request-id": _DROP,
}
_PLAIN = -1  # forwarded as it is
# Header name as spelled on the wire -> kind: skips ``lower()`` for the few spellings a deployment sees.
_request_kind: dict[bytes, int] = {}
_response_kind: dict[bytes, int] = {}

NO_BODY_STATUSES = frozenset({204, 304, *range(100, 200)})
CRLF = b"\r\n"
LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

Header = tuple[bytes, bytes]


class RequestInfo:
    """What lbproxy needs from a request head, read in one pass; ``parts`` are the header bytes to forward."""

    __slots__ = ("authorization", "chunked", "expect", "host", "length", "parts", "preferred", "rid",
                 "transfer_encoding", "websocket", "xff")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.authorization: bytes | None = None
        self.websocket = False
        self.expect: bytes | None = None
        self.chunked = False
        self.transfer_encoding: bytes | None = None
        self.length: int | None = None
        self.rid: bytes | None = None
        self.preferred: bytes | None = None
        self.xff: bytes | None = None
        self.host: bytes | None = None


def scan_request(headers: list[Header], drop_authorization: bool) -> RequestInfo:
    """Read the request head: the values lbproxy acts on, and the headers to forward (hop-by-hop dropped)."""
    info = RequestInfo()
    parts = info.parts
    named: set[bytes] | None = None
    cache = _request_kind
    for name, value in headers:
        kind = cache.get(name)
        if kind is None:
            kind = _learn(cache, _REQUEST_KINDS, name)
        if kind == _PLAIN:
            parts += (name, b": ", value, CRLF)
        elif kind == _LENGTH:
            info.length = int(value)  # llhttp accepts digits only and refuses a second Content-Length
            parts += (name, b": ", value, CRLF)
        elif kind == _AUTH:
            if info.authorization is None:
                info.authorization = value
            if not drop_authorization:
                parts += (name, b": ", value, CRLF)
        elif kind == _WORKER:
            if info.preferred is None:
                info.preferred = value
            parts += (name, b": ", value, CRLF)
        elif kind == _CONNECTION:
            named = _named(value, named)
        elif kind == _TE:
            prior = info.transfer_encoding
            info.transfer_encoding = value if prior is None else prior + b", " + value
        elif kind == _UPGRADE:
            info.websocket = info.websocket or value.strip().lower() == b"websocket"
        elif kind == _EXPECT:
            info.expect = value.strip().lower()
        elif kind == _RID:
            if info.rid is None:
                info.rid = value
        elif kind == _XFF:
            info.xff = value if info.xff is None else info.xff + b", " + value
        elif kind == _HOST:
            if info.host is None:
                info.host = value
    if info.transfer_encoding is not None:
        info.chunked = _last_coding(info.transfer_encoding) == b"chunked"
    if named is not None:
        info.parts = _without_named(parts, named)
    return info


def _learn(cache: dict[bytes, int], kinds: dict[bytes, int], name: bytes) -> int:
    kind = kinds.get(name.lower(), _PLAIN)
    if len(cache) < 4096:  # names are chosen by clients and workers: bounded
        cache[name] = kind
    return kind


def _named(value: bytes, named: set[bytes] | None) -> set[bytes] | None:
    """Add the header names a ``Connection`` value lists (RFC 9110 7.6.1) to ``named``; None while there are none
    that could still be forwarded."""
    tokens = {t.strip().lower() for t in value.split(b",")} - _INERT_TOKENS
    if not tokens:
        return named
    return tokens if named is None else named | tokens


def _without_named(parts: list[bytes], named: set[bytes]) -> list[bytes]:
    """Drop the headers ``Connection`` names (``parts`` holds name, ": ", value, CRLF for each header)."""
    out: list[bytes] = []
    for i in range(0, len(parts), 4):
        if parts[i].lower() not in named:
            out += parts[i:i + 4]
    return out


def _last_coding(transfer_encoding: bytes) -> bytes:
    """The coding applied last, which frames the body (RFC 9112 6.1)."""
    return transfer_encoding.rsplit(b",", 1)[-1].strip().lower()


def request_id(raw: bytes | None) -> bytes:
    """The client's ``X-Request-Id`` when it is sane (as ``headers.request_id``), else a new one."""
    if raw and len(raw) <= 200:
        text = raw.decode("utf-8", "surrogateescape")
        if len(text) <= 200 and text.isprintable():
            return raw
    return _new_request_id()


_random = b""
_random_at = 0


def _new_request_id() -> bytes:
    """32 hex digits, as ``secrets.token_hex(16)``, from OS randomness read 4 KiB at a time (not per request)."""
    global _random, _random_at
    at = _random_at
    if at >= len(_random):
        _random, at = os.urandom(4096), 0
    _random_at = at + 16
    return _random[at:at + 16].hex().encode()


def upstream_tail(info: RequestInfo, *, peer: bytes, host: bytes, rid: bytes, upgrade: bool = False) -> bytes:
    """The worker-bound head after its Host line: forwarded headers, X-Forwarded-*, X-Request-Id, framing; for
    a WebSocket handshake (``upgrade``) the upgrade it asks for (Sec-WebSocket-* go as they are: end to end)."""
    parts = info.parts
    prior = info.xff
    if peer:
        parts += (b"X-Forwarded-For: ", prior + b", " + peer if prior else peer, CRLF)
    elif prior:
        parts += (b"X-Forwarded-For: ", prior, CRLF)
    parts.append(b"X-Forwarded-Proto: http\r\n")
    if host:
        parts += (b"X-Forwarded-Host: ", host, CRLF)
    parts += (b"X-Request-Id: ", rid, CRLF)
    if info.chunked:
        parts.append(b"Transfer-Encoding: chunked\r\n")
    if upgrade:
        parts.append(b"Connection: Upgrade\r\nUpgrade: websocket\r\n")
    parts.append(CRLF)
    return b"".join(parts)


def switching_head(reason: bytes, headers: list[Header], *, worker_id: bytes, rid: bytes) -> bytes:
    """The client-bound head of a worker's 101 to a WebSocket handshake: its headers less hop-by-hop ones (the
    Sec-WebSocket-* answers stay: end to end), the upgrade, the ids."""
    parts = [status_line(False, 101, reason or b"Switching Protocols")]
    named: set[bytes] | None = None
    for name, value in headers:
        lower = name.lower()
        if lower == b"connection":
            named = _named(value, named)
        elif lower not in HOP_BY_HOP and lower not in (b"x-lbproxy-worker-id", b"x-request-id"):
            parts += (name, b": ", value, CRLF)
    if named is not None:
        parts[1:] = _without_named(parts[1:], named)
    parts += (b"Upgrade: websocket\r\nConnection: Upgrade\r\nX-Lbproxy-Worker-Id: ", worker_id,
              b"\r\nX-Request-Id: ", rid, CRLF, CRLF)
    return b"".join(parts)


# How the response body travels to the client.
EMPTY, LENGTH, CHUNKED, UNTIL_CLOSE = 0, 1, 2, 3


def response_head(
    status: int, reason: bytes, headers: list[Header], *, head_request: bool, http10: bool, keep_alive: bool,
    worker_id: bytes, rid: bytes,
) -> tuple[bytes, int, bool, bool]:
    """The client-bound head, in one pass over the worker's headers: status line, the worker's headers less
    hop-by-hop and those ``Connection`` names, the ids, Date and Content-Type when missing (as aiohttp adds
    them), framing, Connection.

    Returns the head, how the body travels (EMPTY, LENGTH, CHUNKED or UNTIL_CLOSE), whether the client
    connection stays open after it, and whether the worker frames its body (else it ends at its close).
    """
    parts = [status_line(http10, status, reason)]
    named: set[bytes] | None = None
    length: bytes | None = None
    chunked = has_date = has_type = False
    codings: bytes | None = None  # transfer codings other than chunked (gzip): they stay on the body
    cache = _response_kind
    for name, value in headers:
        kind = cache.get(name)
        if kind is None:
            kind = _learn(cache, _RESPONSE_KINDS, name)
        if kind == _PLAIN:
            parts += (name, b": ", value, CRLF)
        elif kind == _DROP:
            pass
        elif kind == _CONNECTION:
            named = _named(value, named)
        elif kind == _TE:
            chunked = _last_coding(value) == b"chunked"
            others = [c.strip() for c in value.split(b",") if c.strip() and c.strip().lower() != b"chunked"]
            if others:
                codings = b", ".join(others) if codings is None else codings + b", " + b", ".join(others)
        else:
            if kind == _LENGTH:
                length = value.strip()
            elif kind == _DATE:
                has_date = True
            else:
                has_type = True
            parts += (name, b": ", value, CRLF)
    no_body = head_request or status in NO_BODY_STATUSES
    if no_body:
        mode = EMPTY
        if length is not None and status in NO_BODY_STATUSES:  # RFC 9110 8.6: none on 204/304 (as aiohttp)
            named = (named or set()) | {b"content-length"}
    elif length is not None and not chunked:
        mode = LENGTH
    else:
        mode = UNTIL_CLOSE if http10 else CHUNKED
    if named is not None:
        parts[1:] = _without_named(parts[1:], named)
    parts += (b"X-Lbproxy-Worker-Id: ", worker_id, CRLF, b"X-Request-Id: ", rid, CRLF)
    if not has_date:
        parts += (b"Date: ", http_date(), CRLF)
    if not has_type and not no_body and length != b"0":
        parts.append(b"Content-Type: application/octet-stream\r\n")
    if mode == CHUNKED:
        if codings is not None:  # llhttp took the chunking off, not gzip and the like: the client must know
            parts += (b"Transfer-Encoding: ", codings, b", chunked\r\n")
        else:
            parts.append(b"Transfer-Encoding: chunked\r\n")
    keep_alive = keep_alive and mode != UNTIL_CLOSE
    if not keep_alive:
        if not http10:
            parts.append(b"Connection: close\r\n")
    elif http10:
        parts.append(b"Connection: keep-alive\r\n")
    parts.append(CRLF)
    return b"".join(parts), mode, keep_alive, no_body or chunked or length is not None


_status_lines: dict[tuple[bool, int, bytes], bytes] = {}


def status_line(http10: bool, status: int, reason: bytes) -> bytes:
    key = (http10, status, reason)
    line = _status_lines.get(key)
    if line is None:
        line = b"%s %d %s\r\n" % (b"HTTP/1.0" if http10 else b"HTTP/1.1", status, reason)
        if len(_status_lines) < 512:  # workers choose reasons: keep the cache bounded
            _status_lines[key] = line
    return line


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    """One chunk of a chunked body (``data`` is never empty: an empty chunk ends the body)."""
    return b"%x\r\n" % len(data), data, CRLF


_date_second = 0
_date_value = b""


def http_date() -> bytes:
    """The IMF-fixdate of now, formatted once per second."""
    global _date_second, _date_value
    now = int(time.time())
    if now != _date_second:
        _date_second, _date_value = now, formatdate(now, usegmt=True).encode()
    return _date_value
