"""Scaling with the default settings (unlimited concurrency, queue_delay): a cold start's burst is shared, and a
sustained concurrent load scales beyond one worker (issue 10, section 3)."""

from __future__ import annotations

import asyncio
import collections

import httpx
import pytest


@pytest.mark.slow
async def test_a_cold_start_burst_is_shared_by_the_workers_started_for_it(start_endpoint):
    """12 queued requests at a cold start all went to the first of 3 starting workers ([0, 12, 0])."""
    ep = await start_endpoint(workers={"max": 3}, worker={"env": {"ECHO_INIT_DELAY": "0.5"}})
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50)) as c:
        rs = await asyncio.gather(*(c.get(ep.url + "/sleep?s=1") for _ in range(12)))
    assert [r.status_code for r in rs] == [200] * 12
    served = collections.Counter(r.json()["worker"] for r in rs)
    assert sorted(served.values()) == [4, 4, 4], served  # ceil(12 / scaling.requests_per_worker 4) = 3 workers


@pytest.mark.slow
async def test_the_defaults_scale_a_sustained_concurrent_load_beyond_one_worker(start_endpoint):
    """30 concurrent long requests all went to the one worker: nothing queued, so queue_delay never fired."""
    ep = await start_endpoint(workers={"active": 1, "max": 3})
    [first] = await ep.wait_workers(lambda ws: [w["state"] for w in ws] == ["ready"], "the active worker")
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as c:
        wave = [asyncio.create_task(c.get(ep.url + "/sleep?s=4")) for _ in range(30)]
        await ep.wait_workers(lambda ws: len([w for w in ws if w["state"] == "ready"]) == 3,
                              "two more workers for 30 requests in flight", timeout=30)
        later = await asyncio.gather(*(c.get(ep.url + "/sleep?s=0.5") for _ in range(30)))
        first_wave = await asyncio.gather(*wave)
    assert [r.status_code for r in first_wave + later] == [200] * 60
    spread = collections.Counter(r.json()["worker"] for r in later)
    # The first worker still holds the 30 long ones: the fewest-in-flight rule sends new requests to the new two.
    assert len(set(spread) - {first["id"]}) == 2, spread
    assert "by requests in flight" in ep.log()
