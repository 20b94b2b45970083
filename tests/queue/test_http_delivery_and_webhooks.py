"""``queue.delivery: http`` (any HTTP worker serves a queue) and webhooks with Runpod's retries."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from ..conftest import until
from ..test_reload import _hup, _rewrite
from .conftest import HERE, Queue

pytestmark = pytest.mark.slow


@pytest.fixture
async def http_queue(start_endpoint):
    opened: list[Queue] = []

    async def start(**overrides):
        ep = await start_endpoint(**{"type": "queue", "workers": {"active": 0, "max": 2, "concurrency": 2},
                                     "queue": {"delivery": "http", "webhook_retry_delay": "0.2s"},
                                     # stop_grace: a worker still sleeping in a timed-out job is killed soon
                                     "worker": {"command": [sys.executable, str(HERE / "http_job_worker.py")],
                                                "stop_grace": "1s"},
                                     **overrides})
        q = Queue(ep, Path(sys.executable))
        opened.append(q)
        return q

    yield start
    for q in opened:
        await q.close()


async def test_http_delivery_posts_the_job_and_stores_the_json_answer(http_queue):
    q = await http_queue()
    r = await q.http.post(f"{q.base}/runsync", json={"input": {"p": 1}})
    body = r.json()
    assert body["status"] == "COMPLETED", body
    assert body["output"]["echo"] == {"p": 1} and body["output"]["id"] == body["id"]
    assert body["output"]["worker"] == body["workerId"]


async def test_log_access_writes_a_line_per_client_api_request(http_queue):
    q = await http_queue(log={"access": True})
    job = await q.run({"input": {"p": 1}})
    await q.wait_state(job, "COMPLETED")
    assert (await q.http.get(f"{q.ep.url}/v2/other/health")).status_code == 404
    line = re.compile(r"lbproxy\.access: (\S+) (\S+) (\d{3}) worker=- wait=0\.000s duration=[\d.]+s bytes=(\d+) "
                      r"request_id=-$", re.M)

    async def logged() -> list[tuple[str, ...]] | None:
        found = line.findall(q.ep.log())
        return found if any(f[1] == "/v2/other/health" for f in found) else None
    found = await until(logged, 10, "the access lines")
    assert found[0][:3] == ("POST", f"/v2/{q.ep.config['name']}/run", "200") and int(found[0][3]) > 0
    assert ("GET", f"/v2/{q.ep.config['name']}/status/{job}", "200") in {f[:3] for f in found}
    assert found[-1][:3] == ("GET", "/v2/other/health", "404")
    # Counted too (the dashboard's request charts): every client API request, by status.
    metrics = (await q.http.get(q.ep.admin + "/metrics")).text
    counts = dict(re.findall(r'^lbproxy_requests_total\{code="(\d+)",endpoint="test"\} ([\d.]+)$', metrics, re.M))
    assert float(counts["200"]) == sum(1 for f in found if f[2] == "200") and float(counts["404"]) == 1


async def test_workers_failing_to_start_leave_the_endpoint_responsive_and_the_job_queued(http_queue):
    q = await http_queue(workers={"active": 1, "max": 1},
                         worker={"command": [sys.executable, "-c", "raise SystemExit(3)"], "stop_grace": "1s"})
    job = await q.run({"input": {}})

    async def failing_fast() -> bool:
        return (await q.ep.status())["scaling"]["failed_starts_in_a_row"] >= 2  # the pool now refuses at once
    await until(failing_fast, 30, "two failed starts in a row")
    # The dispatch loop waits for a ready worker; asking the pool again at once would spin and freeze every port.
    async with httpx.AsyncClient(timeout=5) as http:
        for _ in range(3):
            assert (await http.get(q.ep.admin + "/status")).status_code == 200
    assert (await q.status(job))["status"] == "IN_QUEUE"
    assert (await q.health())["jobs"]["inQueue"] == 1


async def test_sighup_reloads_a_queue_endpoint_s_keys_and_access_log_and_refuses_queue_changes(http_queue):
    q = await http_queue(auth={"api_keys": ["k-old-0123456789"]})
    # No worker yet: the dispatch loop waits in the pool, and is no job the leader should count (jobs are
    # counted in the store every replica shares).
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(q.ep.admin + "/internal/load")).json()["queued"] == 0
    _rewrite(q.ep, auth={"api_keys": ["k-new-0123456789"]}, log={"access": True},
             timeouts={**q.ep.config["timeouts"], "execution": "5s"}, workers={**q.ep.config["workers"], "max": 3})
    await _hup(q.ep, "reloaded ")
    assert "auth.api_keys, log.access, timeouts.execution, workers.max" in q.ep.log()
    assert (await q.ep.status())["scaling"]["max"] == 3
    old = await q.http.post(f"{q.base}/run", json={"input": {}}, headers={"Authorization": "Bearer k-old-0123456789"})
    assert old.status_code == 401
    new = {"Authorization": "Bearer k-new-0123456789"}
    r = await q.http.post(f"{q.base}/runsync", json={"input": {"sleep": 6}}, headers=new)
    assert r.json()["status"] == "TIMED_OUT", r.json()  # the reloaded timeouts.execution
    await until(lambda: "lbproxy.access: POST /v2/test/runsync 200" in q.ep.log(), 10, "the access line")
    _rewrite(q.ep, queue={**q.ep.config["queue"], "lease": "9s"})
    await _hup(q.ep, "reload refused")
    assert "queue.lease can only change with a restart" in q.ep.log() and q.ep.proc.poll() is None


async def test_http_delivery_streams_an_ndjson_answer_and_fails_on_an_error_status(http_queue):
    q = await http_queue()
    job_id = await q.run({"input": {"stream": 3}})
    await q.wait_state(job_id, "COMPLETED")
    r = await q.http.get(f"{q.base}/stream/{job_id}")
    assert r.json()["stream"] == [{"output": {"token": i}} for i in range(3)]
    failed = await q.http.post(f"{q.base}/runsync", json={"input": {"status": 500}})
    assert failed.json()["status"] == "FAILED" and "500" in failed.json()["error"]


async def test_streamed_lines_of_a_megabyte_are_chunks_and_one_over_max_result_size_fails_the_job(http_queue):
    q = await http_queue(queue={"delivery": "http", "max_result_size": "1.5MB"})
    job_id = await q.run({"input": {"stream": 2, "line_bytes": 1_000_000}})  # over aiohttp's 128 KiB lines
    done = await q.wait_state(job_id, "COMPLETED", "FAILED")
    assert done["status"] == "COMPLETED", done
    stream = (await q.http.get(f"{q.base}/stream/{job_id}")).json()["stream"]
    assert [len(c["output"]["pad"]) for c in stream] == [1_000_000, 1_000_000]
    over = await q.run({"input": {"stream": 2, "line_bytes": 2_000_000}})
    failed = await q.wait_state(over, "COMPLETED", "FAILED")
    assert failed["status"] == "FAILED" and "over queue.max_result_size" in failed["error"], failed


async def test_http_delivery_requeues_the_job_of_a_worker_that_crashes(http_queue):
    q = await http_queue(queue={"delivery": "http", "max_attempts": 2})
    job_id = await q.run({"input": {"exit": True}})
    failed = await q.wait_state(job_id, "FAILED", timeout=60)
    assert failed["error"] == "worker lost" and failed["retries"] == 1  # infrastructure loss, handed out twice


async def test_http_delivery_times_out_a_slow_job_and_frees_the_worker(http_queue):
    q = await http_queue(workers={"active": 0, "max": 1, "concurrency": 1})
    slow = await q.run({"input": {"sleep": 60}, "policy": {"executionTimeout": 5000}})
    assert (await q.wait_state(slow, "TIMED_OUT", timeout=30))["executionTime"] >= 5000
    r = await q.http.post(f"{q.base}/runsync", json={"input": {"after": 1}})
    assert r.json()["status"] == "COMPLETED"  # the connection was closed: the slot is free again


async def test_a_webhook_gets_the_final_status_and_is_retried(http_queue, unused_tcp_port):
    calls: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        calls.append(await request.json())
        return web.Response(status=500 if len(calls) == 1 else 200)  # the first attempt fails

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        q = await http_queue()
        job_id = await q.run({"input": {"w": 1}, "webhook": f"http://127.0.0.1:{unused_tcp_port}/hook"})
        await until(lambda: len(calls) >= 2, 30, "the webhook and its retry")
        assert calls[0] == calls[1]
        assert calls[1]["id"] == job_id and calls[1]["status"] == "COMPLETED"
        assert calls[1]["output"]["echo"] == {"w": 1}
    finally:
        await runner.cleanup()
