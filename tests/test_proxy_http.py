"""The request path over raw sockets, with real workers: what only a protocol-level HTTP/1.1 path can get wrong
(cases with no worker involved are in test_proxy_inprocess.py).

Framing (pipelining, chunked both ways, 100-continue, bodiless responses, HTTP/1.0), abuse (smuggling
attempts, oversized heads, slowloris), back-pressure and slot accounting, upstream keep-alive.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import Endpoint, until, ws_text_frame

Head = tuple[bytes, dict[str, str]]


async def ready_worker(ep: Endpoint) -> dict[str, Any]:
    [w] = await ep.wait_workers(lambda ws: len(ws) == 1 and ws[0]["state"] == "ready", "a ready worker")
    return w


async def worker_stats(w: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient() as c:
        data: dict[str, Any] = (await c.get(f"http://{w['address']}/stats")).json()
        return data


async def connect(ep: Endpoint) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = ep.config["listen"].split(":")
    return await asyncio.open_connection(host, int(port))


async def read_head(reader: asyncio.StreamReader) -> Head:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = raw[:-4].split(b"\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status_line, headers


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> tuple[bytes, dict[str, str], bytes]:
    """One response as the client sees it, framed by RFC 9112 6.3 (body de-chunked)."""
    status_line, headers = await read_head(reader)
    status = int(status_line.split()[1])
    if method == "HEAD" or status in (204, 304) or status < 200:
        return status_line, headers, b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            assert data.endswith(b"\r\n"), data[-10:]
            if size == 0:
                return status_line, headers, bytes(body)
            body += data[:-2]
    if "content-length" in headers:
        return status_line, headers, await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return status_line, headers, await asyncio.wait_for(reader.read(), 10)


def body_json(body: bytes) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(body)
    return data


async def test_pipelined_requests_are_answered_in_order(start_endpoint):
    ep = await start_endpoint(workers={"active": 1, "max": 1})
    await ready_worker(ep)
    reader, writer = await connect(ep)
    writer.write(b"GET /sleep?s=0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"GET /echo/two HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"POST /echo/three HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
                 b"GET /echo/four HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    status, _, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 200") and body_json(body)["slept"] == 0.3
    for path, length in (("/echo/two", 0), ("/echo/three", 5), ("/echo/four", 0)):
        status, _, body = await read_response(reader)
        assert status.startswith(b"HTTP/1.1 200"), status
        assert (body_json(body)["raw_path"], body_json(body)["body_len"]) == (path, length)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # Connection: close was honoured
    writer.close()


async def test_chunked_request_body_reaches_the_worker_byte_exact(start_endpoint):
    ep = await start_endpoint()
    payload = b"0\r\n\r\nGET / HTTP/1.1\r\n" + bytes(range(256)) * 40  # framing look-alikes inside the body
    pieces = [payload[:1], payload[1:4000], payload[4000:4001], payload[4001:]]
    reader, writer = await connect(ep)
    writer.write(b"POST /echo/up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for i, piece in enumerate(pieces):
        writer.write(b"%x;ext=%d\r\n%s\r\n" % (len(piece), i, piece))
        await writer.drain()
        await asyncio.sleep(0.05)  # separate reads on the proxy's side
    writer.write(b"0\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 200"), status
    got = body_json(body)
    assert got["body_len"] == len(payload) and got["body_sha256"] == hashlib.sha256(payload).hexdigest()
    writer.close()


async def test_chunked_response_reaches_the_client_byte_exact(start_endpoint):
    ep = await start_endpoint()
    reader, writer = await connect(ep)
    writer.write(b"GET /stream?n=40&size=3000&interval=0 HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 200") and headers["transfer-encoding"] == "chunked"
    assert "content-length" not in headers
    assert body == b"".join(f"chunk-{i}".ljust(2999, ".").encode() + b"\n" for i in range(40))
    # The connection stays usable: the chunked body ended exactly where it should.
    writer.write(b"GET /echo/next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert body_json((await read_response(reader))[2])["raw_path"] == "/echo/next"
    writer.close()


async def test_http10_client_gets_an_unframed_body_and_a_close(start_endpoint):
    ep = await start_endpoint()
    reader, writer = await connect(ep)
    writer.write(b"GET /stream?n=3&interval=0 HTTP/1.0\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.0 200") and "transfer-encoding" not in headers
    assert body == b"chunk-0........\nchunk-1........\nchunk-2........\n"
    writer.close()


async def test_expect_100_continue_is_answered_before_the_body(start_endpoint):
    ep = await start_endpoint(limits={"max_body_size": "1KB"})
    reader, writer = await connect(ep)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    assert await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15) == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"hello")
    status, _, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 200")
    got = body_json(body)
    assert got["body_len"] == 5 and "expect" not in {k.lower() for k in got["headers"]}
    # Too large up front: the final answer comes at once, no 100, and the body is never asked for.
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
    status, _, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 413") and body_json(body)["error"] == "body_too_large"
    writer.close()


async def test_head_204_and_304_responses_have_no_body(start_endpoint):
    ep = await start_endpoint()
    reader, writer = await connect(ep)
    writer.write(b"HEAD /bytes?n=100000 HTTP/1.1\r\nHost: x\r\n\r\n")
    _, headers, _ = await read_response(reader, "HEAD")
    assert headers["content-length"] == "100000"
    for code in (204, 304):
        writer.write(b"GET /status/%d HTTP/1.1\r\nHost: x\r\n\r\n" % code)
        status, headers, _ = await read_response(reader)
        assert status.startswith(b"HTTP/1.1 %d" % code)
        assert "content-length" not in headers and "transfer-encoding" not in headers
    # Had any body bytes followed, this response would not parse.
    writer.write(b"HEAD /echo HTTP/1.1\r\nHost: x\r\n\r\nGET /echo/after HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_response(reader, "HEAD")
    status, _, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 200") and body_json(body)["raw_path"] == "/echo/after"
    writer.close()


async def test_connection_cannot_name_the_framing_headers_away(start_endpoint):
    ep = await start_endpoint()
    reader, writer = await connect(ep)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\nhello"
                 b"GET /echo/next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert body_json((await read_response(reader))[2])["body_len"] == 5
    assert body_json((await read_response(reader))[2])["raw_path"] == "/echo/next"
    writer.close()


@pytest.mark.slow
async def test_slowloris_is_cut_off_while_other_clients_are_served(start_endpoint, client):
    ep = await start_endpoint(workers={"active": 1, "max": 1})
    await ready_worker(ep)
    reader, writer = await connect(ep)
    started = time.monotonic()
    head = b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100

    async def trickle() -> None:
        for byte in head:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)

    dripping = asyncio.create_task(trickle())
    try:
        for _ in range(3):  # a normal client meanwhile is served at once
            r = await client.get(ep.url + "/echo")
            assert r.status_code == 200
        assert await asyncio.wait_for(reader.read(), 20) == b""  # closed without an answer
        assert time.monotonic() - started < 5 + 2, "the header timeout is 5 s"
    finally:
        dripping.cancel()
        writer.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_slow_reader_of_a_large_response_is_not_buffered(start_endpoint, client):
    ep = await start_endpoint(workers={"active": 1, "max": 1})
    w = await ready_worker(ep)
    assert (await client.get(ep.url + "/bytes?n=1000000")).status_code == 200  # warm: pools, buffers
    before = rss_kib(ep.proc.pid)
    reader, writer = await connect(ep)
    writer.write(b"GET /bytes?n=500000000 HTTP/1.1\r\nHost: x\r\n\r\n")  # 500 MB, read 1 MB of it
    await read_head(reader)
    await reader.readexactly(1_000_000)
    await asyncio.sleep(3)  # unpaced, the worker would push hundreds of MB into lbproxy by now
    grown = rss_kib(ep.proc.pid) - before
    assert grown < 30_000, f"lbproxy grew {grown} KiB for one slow reader"
    assert (await worker_stats(w))["inflight"] == 1  # paced, not failed
    writer.close()
    await ep.wait_workers(lambda ws: ws[0]["in_flight"] == 0, "the slow reader's slot to be freed")


async def test_client_disconnect_mid_stream_frees_the_slot_and_the_worker(start_endpoint):
    ep = await start_endpoint(workers={"active": 1, "max": 1})
    w = await ready_worker(ep)
    reader, writer = await connect(ep)
    writer.write(b"GET /stream?n=1000&interval=0.05 HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_head(reader)
    await reader.readuntil(b"chunk-2")
    assert (await ep.workers())[0]["in_flight"] == 1
    writer.close()
    await ep.wait_workers(lambda ws: ws[0]["in_flight"] == 0, "the slot to be freed", timeout=5)
    # The worker connection was closed, not left streaming into the void.
    await until(lambda: _inflight(w, 0), 5, "the worker to see its request end")


async def test_client_closing_before_the_response_cancels_the_worker_request(start_endpoint):
    ep = await start_endpoint(workers={"active": 1, "max": 1}, worker={"port": 8000, "health_port": 8001})
    w = await ready_worker(ep)
    port = int(w["address"].rsplit(":", 1)[1])
    _, writer = await connect(ep)
    writer.write(b"GET /sleep?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
    await until(lambda: _inflight(w, 1), 5, "the request to reach the worker")
    assert len(established_peers(port)) == 1
    writer.close()  # a FIN: the client is gone (as for nginx), the request is dropped
    await ep.wait_workers(lambda ws: ws[0]["in_flight"] == 0, "the slot to be freed", timeout=5)
    # lbproxy closed its worker connection (the echo worker, an aiohttp app, lets its handler run on).
    await until(lambda: not established_peers(port), 5, "lbproxy to close the worker connection")


async def _inflight(w: dict[str, Any], n: int) -> bool:
    return bool((await worker_stats(w))["inflight"] == n)


async def test_client_disconnect_while_queued_leaves_the_queue(start_endpoint, client):
    ep = await start_endpoint(workers={"active": 1, "max": 1, "concurrency": 1})
    await ready_worker(ep)
    busy = asyncio.create_task(client.get(ep.url + "/sleep?s=2"))
    await ep.wait_workers(lambda ws: ws[0]["in_flight"] == 1, "the slot taken")
    _, writer = await connect(ep)
    writer.write(b"GET /echo/queued HTTP/1.1\r\nHost: x\r\n\r\n")
    await until(lambda: _queued(ep, 1), 5, "one queued request")
    writer.close()
    await until(lambda: _queued(ep, 0), 5, "the queue to empty")
    assert (await busy).status_code == 200
    await ep.wait_workers(lambda ws: ws[0]["in_flight"] == 0, "every slot freed")
    r = await client.get(ep.url + "/echo")
    assert r.status_code == 200


async def _queued(ep: Endpoint, n: int) -> bool:
    return bool((await ep.status())["queue"]["length"] == n)


def established_peers(port: int) -> set[int]:
    """Local ports of ESTABLISHED TCP connections to ``port`` on this machine (IPv4 loopback)."""
    peers = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state == "01" and int(remote.split(":")[1], 16) == port:
            peers.add(int(local.split(":")[1], 16))
    return peers


async def test_worker_connections_are_kept_alive_and_reused(start_endpoint, client):
    # A separate health port, so that the only connections to the app port are lbproxy's requests.
    ep = await start_endpoint(workers={"active": 1, "max": 1}, worker={"port": 8000, "health_port": 8001})
    w = await ready_worker(ep)
    port = int(w["address"].rsplit(":", 1)[1])
    seen: set[int] = set()
    for i in range(20):
        r = await client.get(ep.url + f"/echo/{i}")
        assert r.status_code == 200
        seen |= established_peers(port)
    assert len(seen) == 1, f"20 sequential requests used {len(seen)} worker connections"
    assert (await worker_stats(w))["requests"] == 20


async def test_a_flood_of_pipelined_requests_is_answered_in_part_then_closed(start_endpoint):
    ep = await start_endpoint()
    reader, writer = await connect(ep)
    writer.write(b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(300)))
    answered = 0
    while True:
        try:
            _, _, body = await read_response(reader)
        except asyncio.IncompleteReadError:
            break
        assert body_json(body)["raw_path"] == f"/echo/{answered}"
        answered += 1
    assert 0 < answered < 300, answered  # in order, as many as lbproxy took, then a clean close
    writer.close()


@pytest.mark.slow
async def test_execution_timeout_mid_response_cuts_the_connection(start_endpoint):
    ep = await start_endpoint(workers={"active": 1, "max": 1}, timeouts={"execution": "5s"})
    w = await ready_worker(ep)
    reader, writer = await connect(ep)
    writer.write(b"GET /stream?n=200&interval=0.1 HTTP/1.1\r\nHost: x\r\n\r\n")  # 20 s of chunks
    status, headers = await read_head(reader)
    assert status.startswith(b"HTTP/1.1 200") and headers["transfer-encoding"] == "chunked"
    rest = await asyncio.wait_for(reader.read(), 15)
    assert b"chunk-10" in rest and not rest.endswith(b"0\r\n\r\n"), rest[-40:]  # truncated, not ended
    writer.close()
    await ep.wait_workers(lambda ws: ws[0]["in_flight"] == 0, "the slot to be freed")
    await until(lambda: _inflight(w, 0), 5, "the worker to see its request end")


async def test_websocket_handshake_after_a_pipelined_request_is_tunnelled_with_the_frames_behind_it(start_endpoint):
    ep = await start_endpoint(auth={"api_keys": ["k-ws"]})
    reader, writer = await connect(ep)
    handshake = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                 b"Authorization: Bearer k-ws\r\n\r\n")
    # A plain request, then the handshake with a frame right behind it (before the 101: the raw bytes that
    # follow the handshake must reach the worker after its 101).
    writer.write(b"GET /echo/first HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k-ws\r\n\r\n"
                 + handshake + ws_text_frame("whoami"))
    status, headers, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 200") and body_json(body)["raw_path"] == "/echo/first"
    status, headers = await read_head(reader)
    assert status.startswith(b"HTTP/1.1 101"), status
    assert headers["x-lbproxy-worker-id"]
    frame = await asyncio.wait_for(reader.readexactly(2), 10)
    assert frame[0] == 0x81  # a text frame: the worker's id
    assert (await reader.readexactly(frame[1])).decode() == headers["x-lbproxy-worker-id"]
    writer.write(ws_text_frame("hello"))
    assert await asyncio.wait_for(reader.readexactly(7), 10) == b"\x81\x05hello"
    writer.close()
    await ep.wait_workers(lambda ws: ws[0]["in_flight"] == 0, "the WebSocket slot to be released")
    # Auth applies to handshakes as to any request.
    reader, writer = await connect(ep)
    writer.write(handshake.replace(b"Authorization: Bearer k-ws\r\n", b""))
    status, _, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 401") and body_json(body)["error"] == "unauthorized"
    writer.close()
