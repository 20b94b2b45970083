"""WebSocket sessions through lbproxy: the handshake goes to the worker like any request, and after its 101 the
bytes are tunnelled, so the worker's answers (subprotocol, extensions, refusal) are the client's."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import httpx
import pytest

from .conftest import until
from .test_proxy_http import connect, read_response

HANDSHAKE = (b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


async def stats(ep) -> dict:
    [w] = await ep.workers()
    async with httpx.AsyncClient() as c:
        data: dict = (await c.get(f"http://{w['address']}/stats")).json()
        return data


async def test_compression_and_subprotocols_are_end_to_end(start_endpoint):
    ep = await start_endpoint()
    async with aiohttp.ClientSession() as s, s.ws_connect(ep.url + "/ws", protocols=["chat"], compress=15) as ws:
        assert ws.protocol == "chat" and ws.compress == 15  # negotiated with the worker itself
        await ws.send_str("headers")
        seen = json.loads((await ws.receive()).data)
        assert "permessage-deflate" in seen["Sec-WebSocket-Extensions"] and seen["Sec-WebSocket-Protocol"] == "chat"
        payload = "x" * 100_000  # compressed frames pass through untouched (RSV1 set), both ways
        await ws.send_str(payload)
        assert (await ws.receive()).data == payload


async def test_a_refused_upgrade_reaches_the_client_as_the_workers_own_answer(start_endpoint):
    ep = await start_endpoint()
    reader, writer = await connect(ep)
    writer.write(HANDSHAKE % b"/status/403")
    status, headers, body = await read_response(reader)
    assert status.startswith(b"HTTP/1.1 403"), status
    assert headers["x-echo-worker"] and json.loads(body) == {"status": 403}  # the worker's, not lbproxy's
    assert headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await ep.wait_workers(lambda ws: ws[0]["in_flight"] == 0, "the slot to be released")


@pytest.mark.slow
async def test_a_session_over_its_execution_timeout_gets_close_frames_at_both_ends(start_endpoint, client):
    ep = await start_endpoint(timeouts={"execution": "5s"})
    async with aiohttp.ClientSession() as s, s.ws_connect(ep.url + "/ws") as ws:
        started = time.monotonic()
        await ws.send_str("hello")
        assert (await ws.receive()).data == "hello"
        msg = await asyncio.wait_for(ws.receive(), 15)
        assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 1011 and msg.extra == "execution timeout"
        assert 4.5 < time.monotonic() - started < 10
    # The worker got a valid, masked close frame too (aiohttp's server refuses unmasked client frames).
    await until(lambda: _closed_with(ep, 1011), 10, "the worker to see close code 1011")
    await ep.wait_workers(lambda ws: ws[0]["in_flight"] == 0, "the slot to be released")


async def _closed_with(ep, code: int) -> bool:
    return code in (await stats(ep))["ws_close_codes"]


async def test_sessions_are_counted_as_requests_with_code_101(start_endpoint, client):
    ep = await start_endpoint()
    for _ in range(2):
        async with aiohttp.ClientSession() as s, s.ws_connect(ep.url + "/ws") as ws:
            await ws.send_str("hi")
            assert (await ws.receive()).data == "hi"
    metrics = (await client.get(ep.admin + "/metrics")).text
    await until(lambda: _sessions_counted(ep, client, 2), 5, "two sessions counted")
    assert 'lbproxy_request_duration_seconds_count{endpoint="test"}' in metrics


async def _sessions_counted(ep, client, n: int) -> bool:
    text = (await client.get(ep.admin + "/metrics")).text
    return f'lbproxy_requests_total{{code="101",endpoint="test"}} {float(n)}' in text
