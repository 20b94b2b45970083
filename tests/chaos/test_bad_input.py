"""Malformed and abusive HTTP: refused within a bound, never forwarded, and a good client is not slowed."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time

import pytest

from ..conftest import until
from .support import host_port, raw_exchange, status_of, tcp_state, timed_get, worker_stats

BOUND = 5.0  # seconds within which a bad request gets its 4xx or its connection closed

MALFORMED = {
    "bad request line": b"GARBAGE\r\n\r\n",
    "bad version": b"GET /echo HTTP/9.9\r\nHost: x\r\n\r\n",
    "space in target": b"GET /echo /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    "header without colon": b"GET /echo HTTP/1.1\r\nHost: x\r\nBroken header\r\n\r\n",
    "space before colon": b"GET /echo HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n",
    "NUL in header value": b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "bare LF line folding": b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "conflicting content-lengths": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
                                    b"Content-Length: 5\r\n\r\nabcde"),
    "content-length list": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc",
    "negative content-length": b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "CL.TE smuggling": (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 44\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"),
    "TE.CL smuggling": (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
                        b"2c\r\nGET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n\r\n0\r\n\r\n"),
    "obfuscated TE (xchunked)": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "TE chunked, identity": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "TE with tab prefix": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\tchunked\x0b\r\n\r\n0\r\n\r\n",
    "bad chunk size": b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "oversized header": b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n",
    "oversized request line": b"GET /echo?" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute-form target": b"GET http://127.0.0.1:1/echo HTTP/1.1\r\nHost: x\r\n\r\n",
    "asterisk-form target": b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
    "authority-form CONNECT": b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
}


@pytest.fixture
async def warm(start_endpoint, client):
    """An endpoint with one ready echo worker and its own address (to count what reached it)."""
    ep = await start_endpoint(workers={"active": 1, "max": 1}, timeouts={"execution": "5s"},
                              limits={"max_body_size": "1MB"})
    [w] = await ep.wait_workers(lambda ws: len(ws) == 1 and ws[0]["state"] == "ready", "a ready worker")
    return ep, w


@pytest.mark.slow
async def test_malformed_requests_are_refused_in_time_and_never_forwarded(warm, client):
    ep, w = warm
    before = (await worker_stats(client, w))["requests"]
    wrong = {}
    for name, data in MALFORMED.items():
        started = time.monotonic()
        raw = await raw_exchange(ep.config["listen"], data, timeout=BOUND + 1, head_only=True)
        took = time.monotonic() - started
        status = status_of(raw)
        if took >= BOUND or not (status is None or 400 <= status < 500) or b"/echo/smuggled" in raw:
            wrong[name] = (round(took, 1), raw[:200])
    assert not wrong, wrong
    assert (await worker_stats(client, w))["requests"] == before, "a malformed request reached the worker"


@pytest.mark.slow
async def test_many_small_headers_are_refused(warm, client):
    ep, w = warm
    before = (await worker_stats(client, w))["requests"]
    headers = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(5000))  # ~540 KB of headers
    raw = await raw_exchange(ep.config["listen"], b"GET /echo HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n",
                             timeout=BOUND + 1)
    status = status_of(raw)
    assert status is None or 400 <= status < 500, raw[:300]
    assert (await worker_stats(client, w))["requests"] == before


@pytest.mark.slow
async def test_chunked_body_is_reframed_so_a_body_cannot_smuggle_a_second_request(warm, client):
    """The body of a well-formed chunked request may look like a request: the worker sees it as bytes."""
    ep, w = warm
    before = (await worker_stats(client, w))["requests"]
    smuggled = b"0\r\n\r\nGET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(smuggled), smuggled)
    raw = await raw_exchange(ep.config["listen"], b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                             b"Connection: close\r\n\r\n" + body)
    assert status_of(raw) == 200 and b'"body_len": %d' % len(smuggled) in raw, raw[:500]
    assert (await worker_stats(client, w))["requests"] == before + 1


async def _baseline(client, url: str, n: int = 20) -> float:
    return statistics.median([await timed_get(client, url) for _ in range(n)])


@pytest.mark.slow
async def test_slowloris_clients_are_cut_off_and_do_not_slow_a_good_client(warm, client):
    ep, _ = warm
    host, port = host_port(ep.config["listen"])
    url = ep.url + "/echo"
    before = await _baseline(client, url)
    request = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"
    closed_after: list[float] = []

    async def trickle() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        started = time.monotonic()
        try:
            for byte in request[:-2]:  # never finish the headers
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)  # the attacker's pace, not synchronisation
                if reader.at_eof() or time.monotonic() - started > 12:
                    break
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(reader.read(1024), 0.001) == b"":
                        break
        except ConnectionError:
            pass
        closed_after.append(time.monotonic() - started)
        writer.close()

    attackers = [asyncio.create_task(trickle()) for _ in range(30)]
    await asyncio.sleep(0)
    during = await _baseline(client, url)
    await asyncio.gather(*attackers)
    assert during < max(5 * before, before + 0.05), (before, during)
    assert max(closed_after) < 10, f"slowloris connections held for {max(closed_after):.1f}s"


@pytest.mark.slow
async def test_slow_reader_is_cut_at_execution_timeout_without_buffering_and_good_clients_go_on(warm, client):
    ep, _ = warm
    host, port = host_port(ep.config["listen"])
    url = ep.url + "/echo"
    before = await _baseline(client, url)
    rss_before = _rss(ep.proc.pid)
    _, writer = await asyncio.open_connection(host, port)
    local_port = writer.get_extra_info("sockname")[1]
    writer.write(b"GET /bytes?n=500000000 HTTP/1.1\r\nHost: x\r\n\r\n")  # 500 MB, never read
    await writer.drain()
    started = time.monotonic()
    try:
        during = await _baseline(client, url)
        assert during < max(5 * before, before + 0.05), (before, during)
        # lbproxy applies back-pressure: it holds little of the 500 MB for the client that does not read ...
        assert _rss(ep.proc.pid) - rss_before < 64 * 2**20, "lbproxy buffered the response for a slow reader"
        # ... and the connection is cut once timeouts.execution (5 s) is over (we see the server's FIN or RST).
        await until(lambda: tcp_state(local_port) != "ESTABLISHED", 12, "the slow reader's connection to be cut")
        assert time.monotonic() - started < 12
    finally:
        writer.close()


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
