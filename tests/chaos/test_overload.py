"""lbproxy out of file descriptors: its own overload, answered with a clear 503, never blamed on the worker."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from ..conftest import error_of

OPEN_FILES = 80  # lbproxy's hard limit: room for its own files and a few dozen sockets


@pytest.mark.slow
async def test_running_out_of_descriptors_gives_503_overloaded_and_keeps_the_worker(start_endpoint, client):
    ep = await start_endpoint(open_files=OPEN_FILES, workers={"active": 1, "max": 1},
                              timeouts={"wait": "30s", "execution": "30s"})
    [w] = await ep.wait_workers(lambda ws: len(ws) == 1 and ws[0]["state"] == "ready", "the active worker")
    # Each request in flight holds two descriptors (client and worker side): 60 at once cannot all fit. They
    # hold them 3 s, over two health probes (1 s apart), which lbproxy cannot open either meanwhile.
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as many:
        rs = await asyncio.gather(*(many.get(ep.url + "/sleep?s=3") for _ in range(60)),
                                  return_exceptions=True)
    statuses = [r.status_code if isinstance(r, httpx.Response) else type(r).__name__ for r in rs]
    overloaded = [r for r in rs if isinstance(r, httpx.Response) and r.status_code == 503]
    assert overloaded, f"the limit was never reached: {statuses}"
    assert all(error_of(r) == "overloaded" and r.headers["retry-after"] == "1" for r in overloaded)
    assert set(statuses) <= {200, 503, "ConnectError", "ReadError", "RemoteProtocolError"}, statuses
    assert 200 in statuses
    # lbproxy's exhaustion is not the worker's fault (neither for requests nor for /ping): it stays in rotation.
    assert [(x["id"], x["state"]) for x in await ep.workers()] == [(w["id"], "ready")]
    assert (await client.get(ep.url + "/echo")).status_code == 200
    log = ep.log()
    assert "out of file descriptors" in log and "unreachable" not in log
    assert log.count("out of file descriptors") <= 3, "the error must not flood the log"
