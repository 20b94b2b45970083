"""The header rules on raw bytes (lbproxy.proxy.framing), against a reference model of RFC 9110 7.6.1 written
here from the rules in the README ("Proxy behaviour"). Pure functions, no sockets: hypothesis makes the heads.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lbproxy.proxy import framing

SPECIAL = ["Connection", "Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Authorization", "Proxy-Connection",
           "Transfer-Encoding", "X-Request-Id", "X-Lbproxy-Worker-Id", "Authorization", "Expect", "Host",
           "X-Forwarded-For", "Date", "Content-Type", "keep-alive", "UPGRADE", "x-request-id"]
ORDINARY = ["X-Custom", "x-custom", "Accept", "X-Hop", "x-hop", "Cache-Control", "ETag", "Server"]
names = st.sampled_from(SPECIAL + ORDINARY)
values = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=12)
connection_values = st.lists(st.sampled_from(["keep-alive", "close", "X-Hop", "x-custom", "TE", "Upgrade"]),
                             min_size=1, max_size=3).map(", ".join)
header_lists = st.lists(st.one_of(st.tuples(names, values), st.tuples(st.just("Connection"), connection_values)),
                        max_size=12)

# The reference model.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te",
              "trailer", "transfer-encoding", "upgrade"}


def named_by_connection(headers: list[tuple[str, str]]) -> set[str]:
    """Headers a Connection value names are hop-by-hop too, except the framing ones (never dropped)."""
    tokens = {t.strip().lower() for n, v in headers if n.lower() == "connection" for t in v.split(",")}
    return tokens - {"content-length", "transfer-encoding"}


def forwarded_response(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    drop = HOP_BY_HOP | named_by_connection(headers) | {"x-request-id", "x-lbproxy-worker-id"}
    return [(n, v) for n, v in headers if n.lower() not in drop]


def forwarded_request(headers: list[tuple[str, str]], drop_authorization: bool) -> list[tuple[str, str]]:
    drop = HOP_BY_HOP | named_by_connection(headers) | {"host", "expect", "x-forwarded-for", "x-request-id"}
    if drop_authorization:
        drop.add("authorization")
    return [(n, v) for n, v in headers if n.lower() not in drop]


def as_bytes(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in headers]


def head_lines(head: bytes) -> list[tuple[str, str]]:
    lines = head.decode().split("\r\n")[1:-2]
    return [(n, v.strip()) for n, _, v in (line.partition(":") for line in lines)]


@given(header_lists)
def test_response_headers_follow_the_hop_by_hop_rules(headers):
    head, mode, keep, _ = framing.response_head(200, b"OK", as_bytes(headers), head_request=False, http10=False,
                                                keep_alive=True, worker_id=b"w-1", rid=b"r-1")
    got = head_lines(head)
    # lbproxy adds framing and, when the worker sent none, a Date and a Content-Type; the ids come last.
    added = {"transfer-encoding", "connection", "date", "content-type", "x-request-id", "x-lbproxy-worker-id"}
    assert [h for h in got if h[0].lower() not in added] == [h for h in forwarded_response(headers)
                                                             if h[0].lower() not in added]
    ids = [(n.lower(), v) for n, v in got if n.lower() in ("x-request-id", "x-lbproxy-worker-id")]
    assert sorted(ids) == [("x-lbproxy-worker-id", "w-1"), ("x-request-id", "r-1")]
    assert mode == framing.CHUNKED and keep  # no Content-Length: re-chunked for an HTTP/1.1 client


@given(header_lists)
def test_request_headers_follow_the_hop_by_hop_rules_and_get_forwarded_ones(headers):
    info = framing.scan_request(as_bytes(headers), drop_authorization=True)
    rid = framing.request_id(info.rid)
    host = info.host or b"proxy:8080"
    got = head_lines(b"GET / HTTP/1.1\r\n" + framing.upstream_tail(info, peer=b"10.0.0.9", host=host, rid=rid))
    prior = ", ".join(v for n, v in headers if n.lower() == "x-forwarded-for")
    expected = [*forwarded_request(headers, drop_authorization=True),
                ("X-Forwarded-For", f"{prior}, 10.0.0.9" if prior else "10.0.0.9"), ("X-Forwarded-Proto", "http"),
                ("X-Forwarded-Host", host.decode()), ("X-Request-Id", rid.decode())]
    assert sorted((n.lower(), v) for n, v in got) == sorted((n.lower(), v) for n, v in expected)


def test_a_websocket_handshake_asks_the_worker_for_the_upgrade_and_keeps_its_sec_headers():
    headers = [(b"Upgrade", b"websocket"), (b"Connection", b"Upgrade"), (b"Sec-WebSocket-Key", b"k"),
               (b"Sec-WebSocket-Protocol", b"chat"), (b"Sec-WebSocket-Extensions", b"permessage-deflate")]
    info = framing.scan_request(headers, drop_authorization=False)
    assert info.websocket
    got = head_lines(b"GET / HTTP/1.1\r\n" + framing.upstream_tail(info, peer=b"", host=b"h", rid=b"r",
                                                                    upgrade=True))
    assert ("Connection", "Upgrade") in got and ("Upgrade", "websocket") in got
    for name in ("Sec-WebSocket-Key", "Sec-WebSocket-Protocol", "Sec-WebSocket-Extensions"):
        assert name in {n for n, _ in got}


def test_the_switching_head_keeps_the_workers_answers_and_names_the_upgrade():
    head = framing.switching_head(b"Switching Protocols", [
        (b"Upgrade", b"websocket"), (b"Connection", b"upgrade, X-Hop"), (b"X-Hop", b"1"),
        (b"Sec-WebSocket-Accept", b"a"), (b"Sec-WebSocket-Extensions", b"permessage-deflate")],
        worker_id=b"w", rid=b"r")
    lines = head_lines(head)
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n") and head.endswith(b"\r\n\r\n")
    assert ("Sec-WebSocket-Accept", "a") in lines and ("Sec-WebSocket-Extensions", "permessage-deflate") in lines
    assert ("X-Hop", "1") not in lines  # named by Connection: hop-by-hop
    assert [n for n, _ in lines].count("Upgrade") == 1 and ("X-Lbproxy-Worker-Id", "w") in lines


def test_connection_cannot_name_the_framing_headers_away():
    info = framing.scan_request([(b"Connection", b"Content-Length, Transfer-Encoding"), (b"Content-Length", b"5")],
                                drop_authorization=False)
    assert b"Content-Length" in info.parts and info.length == 5
    head, mode, _, _ = framing.response_head(200, b"OK", [(b"Connection", b"content-length"),
                                                          (b"Content-Length", b"3")],
                                             head_request=False, http10=False, keep_alive=True, worker_id=b"w",
                                             rid=b"r")
    assert b"Content-Length: 3\r\n" in head and mode == framing.LENGTH


def test_bodiless_responses_keep_content_length_for_head_only():
    cl = [(b"Content-Length", b"42")]
    head, mode, _, framed = framing.response_head(200, b"OK", cl, head_request=True, http10=False,
                                                  keep_alive=True, worker_id=b"w", rid=b"r")
    assert b"Content-Length: 42" in head and mode == framing.EMPTY and framed
    for status in (204, 304):
        head, mode, _, _ = framing.response_head(status, b"X", cl, head_request=False, http10=False,
                                                 keep_alive=True, worker_id=b"w", rid=b"r")
        assert b"Content-Length" not in head and b"Transfer-Encoding" not in head and mode == framing.EMPTY


def test_unframed_response_to_an_http10_client_ends_with_the_connection():
    head, mode, keep, framed = framing.response_head(200, b"OK", [], head_request=False, http10=True,
                                                     keep_alive=True, worker_id=b"w", rid=b"r")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n") and mode == framing.UNTIL_CLOSE and not keep and not framed
    assert b"Transfer-Encoding" not in head


def test_request_ids_are_kept_when_sane_and_made_up_otherwise():
    assert framing.request_id(b"req-123") == b"req-123"
    for bad in (None, b"", b"x" * 201, b"a\x01b", b"\xff\xfe"):
        made = framing.request_id(bad)
        assert len(made) == 32 and int(made, 16) >= 0
    assert framing.request_id(None) != framing.request_id(None)


def test_hop_by_hop_headers_are_dropped_in_any_spelling():
    # Header names are case-insensitive; Node.js and HTTP/2-derived clients send them lowercase.
    sent = [(b"authorization", b"Bearer k"), (b"proxy-authorization", b"Basic x"), (b"te", b"trailers"),
            (b"KEEP-ALIVE", b"timeout=5"), (b"upgrade", b"h2c"), (b"x-request-id", b"r-9"), (b"x-custom", b"1")]
    info = framing.scan_request(sent, drop_authorization=True)
    assert b"".join(info.parts) == b"x-custom: 1\r\n"
    assert info.authorization == b"Bearer k" and info.rid == b"r-9"
    head, _, _, _ = framing.response_head(200, b"OK", sent, head_request=False, http10=False, keep_alive=True,
                                          worker_id=b"w", rid=b"r")
    lower = head.lower()
    for name in (b"proxy-authorization", b"te", b"keep-alive", b"upgrade"):
        assert b"\r\n" + name + b":" not in lower, name
    assert b"\r\nx-request-id: r\r\n" in lower and b"authorization: bearer k" in lower  # responses keep it


def test_transfer_codings_other_than_chunked_stay_named_for_the_client():
    """llhttp takes the chunking off a 'gzip, chunked' body, not the gzip: the client must still be told."""
    for te in (b"gzip, chunked", b"gzip"):
        head, mode, _, _ = framing.response_head(200, b"OK", [(b"Transfer-Encoding", te)], head_request=False,
                                                 http10=False, keep_alive=True, worker_id=b"w", rid=b"r")
        assert mode == framing.CHUNKED and b"Transfer-Encoding: gzip, chunked\r\n" in head, head
    head, _, _, _ = framing.response_head(200, b"OK", [(b"Transfer-Encoding", b"chunked")], head_request=False,
                                          http10=False, keep_alive=True, worker_id=b"w", rid=b"r")
    assert head.count(b"Transfer-Encoding") == 1 and b"Transfer-Encoding: chunked\r\n" in head
