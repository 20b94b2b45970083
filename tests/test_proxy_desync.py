"""The fast engine against framing desynchronisation and stale worker connections (found in review).

Client side: an upgrade request with a body, trailers (size and accounting), a WebSocket-looking request that
llhttp does not upgrade. Worker side, with a raw stdlib worker whose misbehaviour is chosen per path: a worker
that closes a keep-alive connection right after its response, and one that sends bytes after its response.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
from typing import Any

import httpx
import pytest

from .conftest import Endpoint
from .proxy_harness import connection
from .test_proxy_http import body_json, connect, read_response, ready_worker, rss_kib


async def read_until_closed(reader: asyncio.StreamReader, limit: float = 10.0) -> list[Any]:
    """Every response the connection gives until it closes or stays silent (``limit`` seconds in all)."""
    out = []
    deadline = time.monotonic() + limit
    while True:
        try:
            out.append(await asyncio.wait_for(read_response(reader), max(0.1, deadline - time.monotonic())))
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            return out


# -- client side ---------------------------------------------------------------------------------------


async def test_upgrade_request_with_a_body_is_refused_so_the_body_never_runs_as_a_request(start_endpoint):
    ep = await start_endpoint(workers={"active": 1, "max": 1}, timeouts={"execution": "5s"})
    await ready_worker(ep)
    reader, writer = await connect(ep)
    smuggled = b"GET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nUpgrade: h2c\r\n"
                 b"Connection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n"
                 % len(smuggled) + smuggled)
    responses = await read_until_closed(reader)
    writer.close()
    assert len(responses) == 1, responses
    status, headers, body = responses[0]
    assert status.startswith(b"HTTP/1.1 400") and body_json(body)["error"] == "bad_request"
    assert headers["connection"] == "close"


async def test_upgrade_request_with_a_body_never_desyncs_a_pooled_worker_connection(start_endpoint, client):
    ep = await start_endpoint(workers={"active": 1, "max": 1}, timeouts={"execution": "5s"})
    await ready_worker(ep)
    reader, writer = await connect(ep)
    # Had lbproxy sent this head (Content-Length: 200) without its body, the worker would read the next
    # request on that connection, another client's, as those 200 bytes.
    writer.write(b"GET /status/200 HTTP/1.1\r\nHost: x\r\nContent-Length: 200\r\nUpgrade: h2c\r\n"
                 b"Connection: Upgrade\r\n\r\n")
    await read_response(reader)  # 400 and a close now; before the fix, a 200 from the worker
    r = await client.get(ep.url + "/echo/innocent")  # on the pooled worker connection, if there is one
    writer.close()
    assert r.status_code == 200 and r.json()["raw_path"] == "/echo/innocent"


async def test_body_less_h2c_upgrade_is_served_as_http11(start_endpoint):
    ep = await start_endpoint()
    reader, writer = await connect(ep)
    writer.write(b"GET /echo/a HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n"
                 b"GET /echo/b HTTP/1.1\r\nHost: x\r\n\r\n")
    assert body_json((await read_response(reader))[2])["raw_path"] == "/echo/a"
    assert body_json((await read_response(reader))[2])["raw_path"] == "/echo/b"
    writer.close()


async def test_websocket_header_without_connection_upgrade_is_plain_http_and_the_next_request_served(start_endpoint):
    ep = await start_endpoint()
    reader, writer = await connect(ep)
    writer.write(b"GET /echo/ws-ish HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                 b"GET /echo/next HTTP/1.1\r\nHost: x\r\n\r\n")
    assert body_json((await read_response(reader))[2])["raw_path"] == "/echo/ws-ish"
    assert body_json((await read_response(reader))[2])["raw_path"] == "/echo/next"
    writer.close()


async def test_an_endless_trailer_line_is_cut_off_like_an_oversized_head(start_endpoint):
    ep = await start_endpoint(workers={"active": 1, "max": 1})
    await ready_worker(ep)
    reader, writer = await connect(ep)
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: ")
    before = rss_kib(ep.proc.pid)
    block = b"a" * 65536
    try:
        for _ in range(320):  # 20 MiB of one trailer line, unless lbproxy cuts it off first
            writer.write(block)
            await writer.drain()
    except ConnectionError:
        pass
    status, _, body = await read_response(reader)
    writer.close()
    assert status.startswith(b"HTTP/1.1 400") and body_json(body)["error"] == "bad_request"
    assert rss_kib(ep.proc.pid) - before < 8_000, "lbproxy buffered the trailer line"


async def test_a_response_before_the_whole_request_body_says_connection_close(start_endpoint):
    ep = await start_endpoint()
    reader, writer = await connect(ep)
    writer.write(b"GET /status/200 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
    status, headers, _ = await read_response(reader)  # the worker answers without reading the body
    writer.close()
    assert status.startswith(b"HTTP/1.1 200") and headers["connection"] == "close"


async def test_trailer_fields_are_not_a_new_head_so_the_idle_keepalive_deadline_is_armed():
    conn, transport, _ = connection(auth={"api_keys": ["k-0123456789"]})  # every request: 401, no worker
    conn.data_received(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"3\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n")
    assert transport.out.startswith(b"HTTP/1.1 401") and not conn.queue
    assert not conn.parser_busy(), "a trailer field was taken for the head of a next request"
    assert conn.deadline != float("inf"), "an idle keep-alive connection that never times out"


# -- worker side ---------------------------------------------------------------------------------------


RAW_WORKER = textwrap.dedent(r'''
    import asyncio, os, signal, socket

    async def serve(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1]
                if path == b"/ping":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                elif path.startswith(b"/close-after"):
                    # Keep-alive by default, then the server closes (an idle or max-requests policy). Corked:
                    # the response and the FIN leave in one segment.
                    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    writer.close()
                    return
                elif path in (b"/arm", b"/arm-slow"):
                    # The idle-close race, made certain: this connection takes the next request and closes
                    # without answering it, as a worker closing an idle keep-alive connection under it would.
                    # /arm-slow: after working on it for a second (then it is not that race).
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\narmed")
                    await writer.drain()
                    await reader.readuntil(b"\r\n\r\n")
                    if path == b"/arm-slow":
                        await asyncio.sleep(1)
                    with open(os.path.join(os.environ["RAW_DIR"], "dropped"), "a") as f:
                        f.write("1\n")
                    return
                elif path == b"/arm-die":
                    # The idle-close race, then the worker is gone: its listener closes before the connection
                    # drops, so lbproxy's second attempt finds nobody there.
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\narmed")
                    await writer.drain()
                    await reader.readuntil(b"\r\n\r\n")
                    SERVER[0].close()
                    await asyncio.sleep(0.2)
                    os._exit(0)
                elif path == b"/extra":
                    # A worker bug: a second, partial response right behind the first, in the same write.
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                                 b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nLEAKED-")
                else:
                    body = b"path=" + path
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    SERVER = []

    async def main():
        server = await asyncio.start_server(serve, "127.0.0.1", int(os.environ["PORT"]))
        SERVER.append(server)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        server.close()

    asyncio.run(main())
''')


@pytest.fixture
def start_raw(start_endpoint, tmp_path):
    script = tmp_path / "raw_worker.py"
    script.write_text(RAW_WORKER)

    async def start(**overrides: Any) -> Endpoint:
        ep: Endpoint = await start_endpoint(worker={"command": [sys.executable, str(script)],
                                                "env": {"RAW_DIR": str(tmp_path)}},
                                        workers={"active": 1, "max": 1}, **overrides)
        await ready_worker(ep)
        return ep
    return start


async def test_a_pooled_connection_the_worker_closed_is_not_reused(start_raw):
    ep = await start_raw()
    reader, writer = await connect(ep)
    writer.write(b"GET /close-after/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /close-after/2 HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(2):
        status, _, body = await read_response(reader)
        assert status.startswith(b"HTTP/1.1 200") and body == b"ok", (status, body)
    writer.close()


async def test_bytes_after_a_complete_worker_response_never_reach_the_next_client(start_raw):
    ep = await start_raw()
    async with httpx.AsyncClient(timeout=10) as first:
        r = await first.get(ep.url + "/extra")
    assert (r.status_code, r.content) == (200, b"ok")
    async with httpx.AsyncClient(timeout=10) as other:  # would get the same pooled worker connection
        r = await other.get(ep.url + "/innocent")
    assert (r.status_code, r.content) == (200, b"path=/innocent")
    assert "x-lbproxy-worker-id" in r.headers
    await ep.wait_workers(lambda ws: ws[0]["in_flight"] == 0, "the slot to be freed", timeout=5)


async def test_an_idempotent_request_lost_on_a_reused_connection_goes_again_once(start_raw, tmp_path):
    ep = await start_raw()
    reader, writer = await connect(ep)
    writer.write(b"GET /arm HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[2] == b"armed"
    status, _, body = await read_response(reader)  # dropped by the worker on the reused connection, sent again
    assert status.startswith(b"HTTP/1.1 200") and body == b"path=/after", (status, body)
    assert (tmp_path / "dropped").read_text() == "1\n"
    # Out of rotation while the race was not proven; back by the answer to the resend or by /ping, which the
    # failure brings forward.
    assert "sending it again: taken out of rotation" in ep.log()
    await ep.wait_workers(lambda ws: [w["state"] for w in ws] == ["ready"], "back in rotation")
    # A POST is not idempotent: lost the same way, it fails (502). Nothing proves the race then, so the worker is
    # out of rotation (a slot it frees must not take a queued request to a dying worker) until its /ping, which
    # the failure brings forward, answers 200.
    writer.write(b"GET /arm HTTP/1.1\r\nHost: x\r\n\r\nPOST /after HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    assert (await read_response(reader))[2] == b"armed"
    status, _, body = await read_response(reader)
    writer.close()
    assert status.startswith(b"HTTP/1.1 502") and body_json(body)["error"] == "worker_failed"
    await ep.wait_workers(lambda ws: [w["state"] for w in ws] == ["ready"], "back in rotation by its /ping")


async def test_an_idempotent_request_the_worker_worked_on_is_not_sent_again(start_raw, tmp_path):
    ep = await start_raw()
    reader, writer = await connect(ep)
    writer.write(b"GET /arm-slow HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[2] == b"armed"
    status, _, body = await read_response(reader)  # lost after a second of work: maybe acted on, not resent
    writer.close()
    assert status.startswith(b"HTTP/1.1 502") and body_json(body)["error"] == "worker_failed"
    assert (tmp_path / "dropped").read_text() == "1\n"


async def test_an_idempotent_request_whose_worker_is_gone_goes_to_another_worker(start_raw):
    ep = await start_raw()
    [first] = await ep.workers()
    reader, writer = await connect(ep)
    writer.write(b"GET /arm-die HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[2] == b"armed"
    status, headers, body = await read_response(reader)  # sent again: refused, so the worker's replacement has it
    writer.close()
    assert status.startswith(b"HTTP/1.1 200") and body == b"path=/after", (status, body)
    assert headers["x-lbproxy-worker-id"] != first["id"]
