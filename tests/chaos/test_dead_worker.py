"""A worker killed with requests in flight and more queued: only those in flight may fail; a queued request has
never been sent anywhere and must not be lost (issue 10, section 2).

The worker leaves a child that holds its listening socket for a while after it dies (a forked model loader), so
its port still takes connections: a queued request handed to it would hang and then fail.
"""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import pytest

from ..conftest import until
from .support import worker_stats

IN_FLIGHT = 8
QUEUED = 24


@pytest.mark.slow
@pytest.mark.parametrize("method", ["GET", "POST"])  # POST: a long LLM call, which is never sent twice
async def test_queued_requests_survive_a_killed_worker_whose_port_outlives_it(start_endpoint, method):
    ep = await start_endpoint(workers={"active": 2, "max": 2, "concurrency": IN_FLIGHT},
                              timeouts={"wait": "60s"}, worker={"env": {"ECHO_LISTENER_CHILD": "6"}})
    victim, survivor = await ep.wait_workers(lambda ws: len(ws) == 2 and all(w["state"] == "ready" for w in ws),
                                             "two ready workers")
    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=90, limits=limits) as c:
        def pinned(w, seconds: float):
            return c.request(method, f"{ep.url}/sleep?s={seconds}", headers={"X-Lbproxy-Worker-Id": w["id"]})

        # Warm lbproxy's connections to the victim, so that the requests it dies under travel on reused ones.
        assert {r.status_code for r in await asyncio.gather(*(pinned(victim, 0.2) for _ in range(IN_FLIGHT)))} \
            == {200}
        doomed = [asyncio.create_task(pinned(victim, 30)) for _ in range(IN_FLIGHT)]
        busy = [asyncio.create_task(pinned(survivor, 2)) for _ in range(IN_FLIGHT)]
        for w in (victim, survivor):
            await until(lambda w=w: _running(c, w, IN_FLIGHT), 15, f"{IN_FLIGHT} requests on {w['id']}")
        queued = [asyncio.create_task(c.request(method, f"{ep.url}/sleep?s=0.3")) for _ in range(QUEUED)]
        await until(lambda: _queue_length(ep, QUEUED), 15, f"{QUEUED} queued requests")
        os.kill(victim["pid"], signal.SIGKILL)

        for r in await asyncio.gather(*doomed):
            assert r.status_code == 502, r.text  # in flight when the worker died: these may fail, and do
        assert [r.status_code for r in await asyncio.gather(*busy)] == [200] * IN_FLIGHT
        answers = await asyncio.gather(*queued)
    assert [r.status_code for r in answers] == [200] * QUEUED, [r.text for r in answers if r.status_code != 200]
    assert victim["id"] not in {r.json()["worker"] for r in answers}  # the survivor, or the victim's replacement
    # The log counts the requests that died with it (they fail before the exit is noticed, so not "0").
    line = f"worker {victim['id']} exited unexpectedly (killed by SIGKILL) with {IN_FLIGHT} request(s) in flight"
    await until(lambda: line in ep.log(), 10, "the exit's log line")


async def _running(c: httpx.AsyncClient, w, n: int) -> bool:
    return (await worker_stats(c, w))["inflight"] == n


async def _queue_length(ep, n: int) -> bool:
    return (await ep.status())["queue"]["length"] == n
