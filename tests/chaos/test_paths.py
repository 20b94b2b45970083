"""Path and query reach the worker byte for byte; no request can choose the upstream host."""

from __future__ import annotations

import asyncio
import json

import pytest

from ..conftest import free_port
from .support import raw_exchange, status_of

# Beyond tests/test_endpoint.py::test_path_and_query_reach_the_worker_byte_for_byte.
TARGETS = [
    "/echo/%2e%2e/%2e%2e/etc/passwd",
    "/echo/../../../etc/passwd",
    "/echo/./a/./b/",
    "/echo/a/..%2f..%2fb",
    "/echo//127.0.0.1:1//x",
    "/echo/@127.0.0.1:1/x",
    "/echo/%00%09%ff%FE%7f",
    "/echo/%25%32%65",
    "/echo/\\..\\x",
    "/echo/%F0%9F%98%80/%E6%97%A5%E6%9C%AC?name=%F0%9F%98%80",
    "/echo?a=%26&b=a+b&c=%2B&d=%3D%3D&e",
    "/echo?a=b?c=d&url=http://127.0.0.1:1/&&&",
    "/echo?;x=1;y=2",
    "/echo/" + "x" * 4000 + "?q=" + "y" * 2000,
]


@pytest.mark.slow
async def test_tricky_paths_and_queries_reach_the_worker_byte_for_byte(start_endpoint):
    ep = await start_endpoint()
    wrong = {}
    for target in TARGETS:
        raw = await raw_exchange(ep.config["listen"],
                                 f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head, _, body = raw.partition(b"\r\n\r\n")
        if status_of(raw) != 200:
            wrong[target[:60]] = raw[:200]
            continue
        if b"chunked" in head.lower():
            body = body.split(b"\r\n", 1)[1]
        if json.loads(body)["raw_path"] != target:
            wrong[target[:60]] = json.loads(body)["raw_path"][:60]
    assert not wrong, wrong


@pytest.mark.slow
async def test_percent_encoded_newlines_in_the_path_reach_the_worker(start_endpoint):
    ep = await start_endpoint()
    target = "/echo/a%0d%0ab%0A"
    raw = await raw_exchange(ep.config["listen"],
                             f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    assert status_of(raw) == 200, raw[:300]
    head, _, body = raw.partition(b"\r\n\r\n")
    body = body.split(b"\r\n", 1)[1] if b"chunked" in head.lower() else body
    assert json.loads(body)["raw_path"] == target


@pytest.mark.slow
async def test_raw_utf8_target_is_passed_unchanged_or_refused(start_endpoint):
    """Raw non-ASCII bytes are not valid in a request target: forwarded unchanged or refused, never altered."""
    ep = await start_endpoint()
    target = "/echo/café/日本?q=ü".encode()
    request = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    raw = await raw_exchange(ep.config["listen"], request)
    status = status_of(raw)
    if status == 200:
        body = raw.partition(b"\r\n\r\n")[2]
        body = body.split(b"\r\n", 1)[1] if b"chunked" in raw.partition(b"\r\n\r\n")[0].lower() else body
        assert json.loads(body)["raw_path"].encode() == target
    else:
        assert status is None or 400 <= status < 500, raw[:200]


@pytest.mark.slow
async def test_no_request_can_choose_the_upstream_host(start_endpoint):
    """Host headers, absolute-form and authority-form targets never make lbproxy connect anywhere else."""
    decoy_port = free_port()
    decoy = f"127.0.0.1:{decoy_port}"
    contacted: list[bytes] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        contacted.append(await reader.read(1024))
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", decoy_port)
    async with server:
        ep = await start_endpoint()
        listen = ep.config["listen"]
        attempts = [
            f"GET /echo HTTP/1.1\r\nHost: {decoy}\r\n\r\n",
            f"GET /echo HTTP/1.1\r\nHost: {decoy}\r\nX-Forwarded-Host: {decoy}\r\nForwarded: host={decoy}\r\n\r\n",
            f"GET http://{decoy}/echo HTTP/1.1\r\nHost: {decoy}\r\n\r\n",
            f"GET //{decoy}/echo HTTP/1.1\r\nHost: x\r\n\r\n",
            f"CONNECT {decoy} HTTP/1.1\r\nHost: {decoy}\r\n\r\n",
            f"GET @{decoy}/echo HTTP/1.1\r\nHost: x\r\n\r\n",
            f"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nHost: {decoy}\r\n\r\n",
        ]
        for attempt in attempts:
            raw = await raw_exchange(listen, attempt.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n").encode())
            status = status_of(raw)
            assert status is None or status < 500 or status == 502, (attempt, raw[:200])
        assert contacted == [], f"lbproxy connected to the decoy: {contacted}"
