"""Framing and admission of the request path in-process, on a mock transport: the cases where lbproxy answers
itself and no worker may be reached (smuggling attempts, oversized heads, refused requests to HEAD). A ready
worker sits in the pool at an address nobody listens on: reaching it would show as a reserved slot."""

from __future__ import annotations

import json

import pytest

from lbproxy.policy import WorkerState

from .proxy_harness import connection, responses, settle


def with_a_worker(**settings):
    conn, transport, shared = connection(**settings)
    w = shared.pool.add("w1", "127.0.0.1", 9, 9)
    shared.pool.set_state(w, WorkerState.READY)
    return conn, transport, w


@pytest.mark.parametrize("head", [
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
    b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Bad : 1\r\n\r\n",
    b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n b\r\n\r\n",
], ids=["cl-then-te", "te-then-cl", "duplicate-cl", "cl-list", "te-not-only-chunked", "space-before-colon",
        "obs-fold"])
async def test_ambiguous_framing_gets_400_and_never_reaches_the_worker(head):
    conn, transport, w = with_a_worker()
    conn.data_received(head + b"GET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    [r] = responses(bytes(transport.out))
    assert r.status == 400 and json.loads(r.body)["error"] == "bad_request"
    assert r.headers["connection"] == "close" and r.headers["x-request-id"]
    assert transport.eof, "closed: the rest is never read as a request"
    assert (w.in_flight, w.served) == (0, 0)


@pytest.mark.parametrize("headers", [b"X-Big: " + b"a" * 70000 + b"\r\n",
                                     b"".join(b"X-H%d: v\r\n" % i for i in range(200))], ids=["large", "many"])
async def test_oversized_request_head_gets_431(headers):
    conn, transport, w = with_a_worker()
    conn.data_received(b"GET /echo HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    await settle()
    [r] = responses(bytes(transport.out))
    assert r.status == 431 and json.loads(r.body)["error"] == "headers_too_large"
    assert (w.in_flight, w.served) == (0, 0)


async def test_an_oversized_head_fed_in_small_reads_gets_431_too():
    conn, transport, _ = with_a_worker()
    conn.data_received(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: ")
    for _ in range(20):
        conn.data_received(b"a" * 4096)
    await settle()
    [r] = responses(bytes(transport.out))
    assert r.status == 431


async def test_lbproxy_errors_to_head_requests_have_no_body():
    """A 401 to HEAD carries Content-Length but no body: a body would be read as the next response."""
    conn, transport, _ = with_a_worker(auth={"api_keys": ["k-0123456789abcdef"]})
    conn.data_received(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    head, get = responses(bytes(transport.out), head_requests=1)
    assert head.status == 401 and int(head.headers["content-length"]) > 0 and not head.body
    assert get.status == 401 and json.loads(get.body)["error"] == "unauthorized"


async def test_an_absolute_form_target_cannot_choose_the_upstream():
    conn, transport, w = with_a_worker()
    conn.data_received(b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    await settle()
    [r] = responses(bytes(transport.out))
    assert r.status == 400 and "origin-form" in json.loads(r.body)["message"]
    assert w.served == 0


async def test_an_unsupported_expectation_gets_417():
    conn, transport, w = with_a_worker()
    conn.data_received(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 0\r\n\r\n")
    await settle()
    [r] = responses(bytes(transport.out))
    assert r.status == 417 and w.served == 0


async def test_a_body_declared_over_the_limit_gets_413_before_it_is_read():
    conn, transport, w = with_a_worker(limits={"max_body_size": 1000})
    conn.data_received(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
    await settle()
    [r] = responses(bytes(transport.out))
    assert r.status == 413 and r.headers["connection"] == "close" and w.served == 0
