"""Header rules at the proxy boundary: hop-by-hop stripping, X-Forwarded-*, request ids."""

from __future__ import annotations

import secrets

from multidict import CIMultiDict, CIMultiDictProxy, istr

# RFC 9110 7.6.1 plus the de-facto ones (Keep-Alive, Proxy-Connection). Host and Content-Length are set
# by the client library for the upstream hop; Expect is answered by lbproxy itself (100-continue).
HOP_BY_HOP = frozenset(
    istr(h)
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
        "TE", "Trailer", "Transfer-Encoding", "Upgrade",
    )
)
_REQUEST_DROP = HOP_BY_HOP | {istr("Host"), istr("Expect")}
_WS_DROP = _REQUEST_DROP | {
    istr(h) for h in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
                      "Sec-WebSocket-Protocol", "Sec-WebSocket-Accept")
}
_RESPONSE_DROP = HOP_BY_HOP

WORKER_ID = istr("X-Lbproxy-Worker-Id")
REQUEST_ID = istr("X-Request-Id")
AUTHORIZATION = istr("Authorization")
_XFF = istr("X-Forwarded-For")


def _connection_tokens(headers: CIMultiDictProxy[str]) -> set[str]:
    """Headers named in ``Connection`` are hop-by-hop too (RFC 9110 7.6.1)."""
    values = headers.getall("Connection", ())
    return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}


def request_id(headers: CIMultiDictProxy[str]) -> str:
    """The client's ``X-Request-Id`` when it is sane, else a new one."""
    rid = headers.get(REQUEST_ID)
    if rid and len(rid) <= 200 and rid.isprintable():
        return rid
    return secrets.token_hex(16)


def upstream_request_headers(
    headers: CIMultiDictProxy[str],
    *,
    peer: str | None,
    scheme: str,
    host: str | None,
    rid: str,
    drop_authorization: bool,
    websocket: bool = False,
) -> CIMultiDict[str]:
    """The headers sent to the worker: the client's, less hop-by-hop, plus X-Forwarded-* and X-Request-Id."""
    drop = _WS_DROP if websocket else _REQUEST_DROP
    named = _connection_tokens(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        if k in drop or (named and k.lower() in named) or (drop_authorization and k == AUTHORIZATION):
            continue
        if k == _XFF:
            continue
        out.add(k, v)
    prior = ", ".join(headers.getall(_XFF, ()))
    if peer:
        out[_XFF] = f"{prior}, {peer}" if prior else peer
    elif prior:
        out[_XFF] = prior
    out["X-Forwarded-Proto"] = scheme
    if host:
        out["X-Forwarded-Host"] = host
    out[REQUEST_ID] = rid
    return out


def downstream_response_headers(headers: CIMultiDictProxy[str], worker_id: str, rid: str) -> CIMultiDict[str]:
    """The worker's response headers, less hop-by-hop, plus the worker id and the request id."""
    named = _connection_tokens(headers)
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in headers.items():
        if k in _RESPONSE_DROP or (named and k.lower() in named):
            continue
        out.add(k, v)
    out[WORKER_ID] = worker_id
    out[REQUEST_ID] = rid
    return out
