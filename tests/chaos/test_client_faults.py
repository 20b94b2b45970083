"""Clients that go away mid-request or mid-stream: the upstream request is cancelled, nothing leaks.

lbproxy runs in this test's own event loop (``lbproxy.server.serve``) so that its asyncio tasks and sockets
can be counted before and after; the worker is a real process (``workers/faulty.py``) whose requests end
when lbproxy closes their connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lbproxy.config import parse_config
from lbproxy.server import serve

from ..conftest import free_port, until
from .support import faulty_worker, host_port, open_sockets, worker_stats

ROUNDS = 8


@pytest.fixture
async def inproc(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    chaos_dir = tmp_path
    listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config = parse_config({
        "name": "inproc", "listen": listen, "admin": admin,
        "workers": {"active": 1, "max": 1},
        "timeouts": {"idle": "30s", "execution": "60s", "wait": "10s", "shutdown": "2s"},
        "worker": {**faulty_worker(chaos_dir), "stop_grace": "2s"},
    }, environ={})
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop))
    ep = {"url": f"http://{listen}", "admin": f"http://{admin}", "listen": listen}
    try:
        async with httpx.AsyncClient(timeout=10) as c:
            async def ready() -> list[dict[str, Any]]:
                with contextlib.suppress(httpx.TransportError):
                    ws = (await c.get(ep["admin"] + "/status")).json()["workers"]
                    return [w for w in ws if w["state"] == "ready"]
                return []
            [ep["worker"]] = await until(ready, 20, "the active worker")
        yield ep
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 20) == 0


def _settled_tasks() -> int:
    return len([t for t in asyncio.all_tasks() if t is not asyncio.current_task()])


async def _disconnect_mid_request(listen: str, client: httpx.AsyncClient, worker: dict[str, Any]) -> None:
    host, port = host_port(listen)
    _, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /sleep?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await until(lambda: _inflight(client, worker, 1), 10, "the request to reach the worker")
    writer.close()


async def _disconnect_mid_stream(listen: str) -> None:
    host, port = host_port(listen)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /stream?n=100000&interval=0.01 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    seen = b""
    async with asyncio.timeout(10):
        while seen.count(b"chunk-") < 3:
            seen += await reader.read(4096)
    writer.close()


async def _disconnect_mid_upload(listen: str, client: httpx.AsyncClient, worker: dict[str, Any]) -> None:
    host, port = host_port(listen)
    _, writer = await asyncio.open_connection(host, port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n" + b"u" * 65536)
    await writer.drain()
    await until(lambda: _inflight(client, worker, 1), 10, "the upload to reach the worker")
    writer.close()


async def _inflight(client: httpx.AsyncClient, worker: dict[str, Any], n: int) -> bool:
    return (await worker_stats(client, worker))["inflight"] == n


@pytest.mark.slow
@pytest.mark.parametrize("how", ["mid-request", "mid-stream", "mid-upload"])
async def test_client_disconnect_cancels_upstream_frees_the_slot_and_leaks_nothing(inproc, how):
    ep, worker = inproc, inproc["worker"]
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(ep["url"] + "/echo")).status_code == 200

    async def counts() -> tuple[int, int]:
        return _settled_tasks(), open_sockets(os.getpid())

    tasks_before, sockets_before = await counts()
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(ROUNDS):
            if how == "mid-request":
                await _disconnect_mid_request(ep["listen"], client, worker)
            elif how == "mid-stream":
                await _disconnect_mid_stream(ep["listen"])
            else:
                await _disconnect_mid_upload(ep["listen"], client, worker)
            # The worker sees its request cancelled (its handler ends) and lbproxy frees the slot.
            await until(lambda: _inflight(client, worker, 0), 5, "the upstream request to be cancelled")

            async def slot_free() -> bool:
                ws = (await client.get(ep["admin"] + "/status")).json()["workers"]
                return ws[0]["in_flight"] == 0
            await until(slot_free, 5, "lbproxy to free the worker slot")
        stats = await worker_stats(client, worker)
        assert stats["requests"] == ROUNDS + 1, "a cancelled request must not be retried on the worker"
        assert stats["abandoned"] == ROUNDS

    async def settled() -> bool:
        tasks, sockets = await counts()
        return tasks <= tasks_before and sockets <= sockets_before

    # Pooled upstream keep-alive connections expire after 4 s: allow for that, no more.
    await until(settled, 10, f"tasks and sockets back to {tasks_before}/{sockets_before} (now {await counts()})")
