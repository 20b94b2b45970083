"""Graceful shutdown under load: in-flight requests finish (up to a bound), new ones are refused, no orphans."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import pytest

from ..conftest import error_of, pid_alive
from .support import faulty_worker, process_group_members

SHUTDOWN = 3.0
STOP_GRACE = 1.0


@pytest.mark.slow
async def test_sigterm_under_load_finishes_in_flight_refuses_new_and_leaves_no_process(
        start_endpoint, client, tmp_path: Path):
    ep = await start_endpoint(
        workers={"active": 2, "max": 2},
        timeouts={"shutdown": f"{SHUTDOWN}s"},
        worker={**faulty_worker(tmp_path, CHAOS_CHILD="1"), "stop_grace": f"{STOP_GRACE}s"},
    )
    ws = await ep.wait_workers(lambda ws: len(ws) == 2 and all(w["state"] == "ready" for w in ws), "2 ready")
    children = [int((tmp_path / f"child-{w['id']}").read_text()) for w in ws]
    short = [asyncio.create_task(client.get(ep.url + "/sleep?s=1.5")) for _ in range(6)]
    too_long = asyncio.create_task(client.get(ep.url + "/sleep?s=60"))
    await ep.wait_workers(lambda ws: sum(w["in_flight"] for w in ws) == 7, "7 requests in flight")

    ep.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    # New requests (on fresh connections) are refused while the in-flight ones finish.
    async with httpx.AsyncClient(timeout=5) as fresh:
        try:
            r = await fresh.get(ep.url + "/sleep?s=0")
        except httpx.TransportError:
            pass  # the listening socket is closed already
        else:
            assert r.status_code == 503 and error_of(r) == "shutting_down"
    for r in await asyncio.gather(*short):
        assert r.status_code == 200, r.text
    # At timeouts.shutdown, a request with no response byte yet gets an answer, not a closed connection.
    r = await too_long
    assert r.status_code == 503 and error_of(r) == "shutting_down", r.text
    assert r.headers["retry-after"] == "1" and r.headers["x-request-id"]
    assert await asyncio.to_thread(ep.proc.wait, 20) == 0
    assert "1 request(s) in progress: 1 answered 503 shutting_down (no response byte yet), 0 cut" in ep.log()
    took = time.monotonic() - signalled
    assert took < SHUTDOWN + STOP_GRACE + 4, f"shutdown took {took:.1f}s"
    # Every worker's whole process group is gone, the child that ignores SIGTERM included.
    for w in ws:
        assert process_group_members(w["process_group"]) == [], f"worker {w['id']} left processes behind"
    assert not [pid for pid in children if pid_alive(pid)]
