"""The worker and client APIs at their edges, over raw HTTP. The test plays the worker: a stand-in
process hands over the environment lbproxy gave it (URLs, secret), and the test speaks the protocol."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import deep_merge, until
from .conftest import HERE, Queue


class Stand:
    """One started worker, played by the test."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.id = env["RUNPOD_POD_ID"]
        self.key = env["RUNPOD_AI_API_KEY"]
        self.http = httpx.AsyncClient(timeout=30, headers={"Authorization": self.key})

    def url(self, name: str, job_id: str = "") -> str:
        return self.env[name].replace("$ID", job_id)

    async def take(self, batch: int = 1) -> httpx.Response:
        url = self.url("RUNPOD_WEBHOOK_GET_JOB") + "&job_in_progress=0"
        if batch > 1:
            url = url.replace("/job-take/", "/job-take-batch/") + f"&batch_size={batch}"
        return await self.http.get(url)

    async def done(self, job_id: str, result: Any, raw: bytes | None = None) -> httpx.Response:
        body = raw if raw is not None else json.dumps(result).encode()
        return await self.http.post(self.url("RUNPOD_WEBHOOK_POST_OUTPUT", job_id) + "&isStream=false", content=body,
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})

    async def ping(self, *job_ids: str) -> httpx.Response:
        params = {"runpod_version": "1.12.0", **({"job_id": ",".join(job_ids)} if job_ids else {})}
        return await self.http.get(self.url("RUNPOD_WEBHOOK_PING"), params=params)


@pytest.fixture
async def stand_queue(start_endpoint, tmp_path):
    """``q, stand = await stand_queue(**overrides)``: a queue endpoint with one stand-in worker running."""
    opened: list[tuple[Queue, Stand]] = []

    async def start(key: str | None = None, **overrides: Any) -> tuple[Queue, Stand]:
        dump = tmp_path / f"env{len(opened)}"
        dump.mkdir()
        cfg = {"type": "queue", "workers": {"active": 1, "max": 1},
               "queue": {"ping_interval": "1s", "lease": "3s", "take_hold": "1s", "stop_grace": "3s"},
               "worker": {"command": [sys.executable, str(HERE / "env_worker.py")], "stop_grace": "2s",
                          "env": {"ENV_DUMP_DIR": str(dump)}}}
        ep = await start_endpoint(**deep_merge(cfg, overrides))
        files = await until(lambda: list(dump.glob("*.json")), 20, "the stand-in worker's environment")
        stand = Stand(json.loads(files[0].read_text()))
        q = Queue(ep, Path(sys.executable), key)
        opened.append((q, stand))
        return q, stand

    yield start
    for q, stand in opened:
        await q.close()
        await stand.http.aclose()


async def test_a_worker_is_ready_at_its_first_contact_and_an_empty_take_is_held(stand_queue):
    q, w = await stand_queue()
    assert [x["state"] for x in await q.ep.workers()] == ["starting"]  # no /ping server: never probed
    started = time.monotonic()
    r = await w.take()
    assert r.status_code == 204
    assert time.monotonic() - started >= 0.9  # held (queue.take_hold: 1s): an SDK re-polls at once
    assert [x["state"] for x in await q.ep.workers()] == ["ready"]


async def test_a_waiting_take_gets_a_job_as_soon_as_it_is_committed(stand_queue):
    q, w = await stand_queue(queue={"take_hold": "20s"})
    await w.ping()
    take = asyncio.create_task(w.take())
    await asyncio.sleep(0.2)  # let the poll park (not a synchronisation: the test passes either way)
    started = time.monotonic()
    job_id = await q.run({"input": {"x": 1}, "s3Config": {"bucketName": "b"}})
    r = await take
    assert time.monotonic() - started < 5
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json() == {"id": job_id, "input": {"x": 1}, "s3Config": {"bucketName": "b"}}
    assert (await q.status(job_id))["status"] == "IN_PROGRESS"


async def test_the_admin_status_shows_the_job_queue(stand_queue):
    q, _ = await stand_queue()
    for i in range(2):
        await q.run({"input": i})
    await q.run({"input": "low", "policy": {"lowPriority": True}})

    async def queue_of_two():
        queue = (await q.ep.status())["queue"]
        return queue if queue["length"] == 2 else None  # low priority is not counted (it drives no scaling)
    assert (await until(queue_of_two, 10, "the admin queue length"))["in_progress"] == 0


async def test_batch_takes_answer_a_list(stand_queue):
    q, w = await stand_queue()
    ids = [await q.run({"input": i}) for i in range(3)]
    r = await w.take(batch=5)
    assert [j["id"] for j in r.json()] == ids


async def test_results_are_json_in_a_form_labelled_body_and_the_first_one_wins(stand_queue):
    q, w = await stand_queue()
    job_id = await q.run({"input": 1})
    assert (await w.take()).json()["id"] == job_id
    big = {"output": {"blob": "x" * 3_000_000}}  # over aiohttp's 1 MiB default: must not be a 413
    assert (await w.done(job_id, big)).status_code == 200
    assert (await w.done(job_id, {"output": "second"})).status_code == 200  # answered 200, dropped
    status = await q.status(job_id)
    assert status["status"] == "COMPLETED" and len(status["output"]["blob"]) == 3_000_000


async def test_a_worker_cannot_reach_routes_or_jobs_without_its_own_secret(stand_queue):
    q, w = await stand_queue()
    job_id = await q.run({"input": 1})
    forged = httpx.AsyncClient(timeout=30, headers={"Authorization": "not-the-key"})
    try:
        r = await forged.get(w.url("RUNPOD_WEBHOOK_GET_JOB"))
        assert r.status_code == 401 and error_of_status(r) == "UNAUTHORIZED"
        other = w.url("RUNPOD_WEBHOOK_GET_JOB").replace(f"/job-take/{w.id}", "/job-take/someone-else")
        assert (await w.http.get(other)).status_code == 401  # its key opens only its own routes
    finally:
        await forged.aclose()
    assert (await q.status(job_id))["status"] == "IN_QUEUE"
    # A result for a job it does not hold is answered 200 (so an SDK does not retry) and dropped.
    assert (await w.done(job_id, {"output": "forged"})).status_code == 200
    assert (await q.status(job_id))["status"] == "IN_QUEUE"


def error_of_status(r: httpx.Response) -> str:
    body = r.json()
    assert r.headers["content-type"].startswith("application/json") and body["error"] and body["message"]
    status: str = body["status"]
    return status


async def test_clients_never_reach_the_worker_api(stand_queue):
    q, w = await stand_queue()
    take_path = w.url("RUNPOD_WEBHOOK_GET_JOB").split("/v2/", 1)[1]
    r = await q.http.get(f"{q.ep.url}/v2/{take_path}")
    assert r.status_code == 404 and error_of_status(r) == "NOT_FOUND"
    assert not w.env["RUNPOD_WEBHOOK_GET_JOB"].startswith(q.ep.url)


async def test_pings_renew_leases_and_a_lapsed_lease_requeues(stand_queue):
    q, w = await stand_queue(queue={"lease": "2s"})
    job_id = await q.run({"input": 1})
    assert (await w.take()).status_code == 200
    until_ = time.monotonic() + 4  # twice the lease, kept alive by pings
    while time.monotonic() < until_:
        assert (await w.ping(job_id)).status_code == 200
        await asyncio.sleep(0.5)
    assert (await q.status(job_id))["status"] == "IN_PROGRESS"
    requeued = await q.wait_state(job_id, "IN_QUEUE", timeout=10)  # pings stop: the lease runs out
    assert requeued["retries"] == 1
    assert (await w.take()).json()["id"] == job_id  # at least once: it is handed out again


async def test_a_result_over_the_limit_fails_the_job_with_a_reason(stand_queue):
    q, w = await stand_queue(queue={"max_result_size": "1KB"})
    job_id = await q.run({"input": 1})
    await w.take()
    assert (await w.done(job_id, {"output": "x" * 2000})).status_code == 200
    failed = await q.status(job_id)
    assert failed["status"] == "FAILED" and "queue.max_result_size" in failed["error"]


async def test_client_errors_are_json_with_a_status(stand_queue):
    q, _ = await stand_queue(key="k1", auth={"api_keys": ["k1"]}, queue={"max_run_body": "1KB"})
    anon = httpx.AsyncClient(timeout=30)
    try:
        r = await anon.post(f"{q.base}/run", json={"input": 1})
        assert r.status_code == 401 and error_of_status(r) == "UNAUTHORIZED"
        raw = await anon.post(f"{q.base}/run", json={"input": 1}, headers={"Authorization": "k1"})
        assert raw.status_code == 200  # the raw key works too, as in Runpod's curl examples
    finally:
        await anon.aclose()
    r = await q.http.get(f"{q.base}/status/nope")
    assert r.status_code == 404 and error_of_status(r) == "NOT_FOUND"
    r = await q.http.post(f"{q.base}/run", json={"input": "x" * 2000})
    assert r.status_code == 413 and r.json()["error"] == "body_too_large" and error_of_status(r) == "BODY_TOO_LARGE"
    assert (await q.http.post(f"{q.base}/runsync", json={"input": "x" * 2000, "policy": {"ttl": 20000}},
                              params={"wait": "1000"})).status_code == 200  # /runsync has its own limit
    r = await q.http.post(f"{q.base}/run", content=b"input=1")
    assert r.status_code == 400 and error_of_status(r) == "BAD_REQUEST"
    r = await q.http.post(f"{q.ep.url}/v2/other-endpoint/run", json={"input": 1})
    assert r.status_code == 404 and error_of_status(r) == "NOT_FOUND"


async def test_runsync_answers_with_the_id_when_the_wait_runs_out(stand_queue):
    q, _ = await stand_queue()
    started = time.monotonic()
    r = await q.http.post(f"{q.base}/runsync", json={"input": 1}, params={"wait": "1000"})
    assert 0.9 <= time.monotonic() - started < 10
    assert r.status_code == 200 and r.json()["status"] == "IN_QUEUE" and r.json()["id"].startswith("sync-")


async def test_cancel_retry_and_purge(stand_queue):
    q, w = await stand_queue()
    a, b, c = [await q.run({"input": i}) for i in range(3)]
    r = await q.http.post(f"{q.base}/cancel/{a}")
    assert r.json() == {"id": a, "status": "CANCELLED"}
    taken = (await w.take()).json()["id"]
    assert taken == b  # a cancelled job is never handed out
    await w.done(b, {"error": "boom"})
    r = await q.http.post(f"{q.base}/retry/{b}")
    assert r.json() == {"id": b, "status": "IN_QUEUE"}
    r = await q.http.post(f"{q.base}/retry/{a}")
    assert r.status_code == 400 and r.json()["status"] == "CANCELLED"
    r = await q.http.post(f"{q.base}/purge-queue")
    assert r.json() == {"removed": 2, "status": "completed"}  # b (retried) and c
    assert (await q.status(c))["_http"] == 404


async def test_retention_deletes_finished_results(stand_queue):
    q, w = await stand_queue(queue={"retention": "1s"})
    job_id = await q.run({"input": 1})
    await w.take()
    await w.done(job_id, {"output": 1})
    assert (await q.status(job_id))["status"] == "COMPLETED"
    await until(lambda: _gone(q, job_id), 10, "the result deleted after queue.retention")


async def _gone(q: Queue, job_id: str) -> bool:
    return (await q.status(job_id))["_http"] == 404


@pytest.mark.slow
async def test_the_ttl_removes_a_queued_job_and_a_running_one(stand_queue):
    q, w = await stand_queue(timeouts={"ttl": "10s"})
    running = await q.run({"input": 1})
    await w.take()
    queued = await q.run({"input": 2})
    await until(lambda: _gone(q, queued), 20, "the queued job gone after its TTL")
    await until(lambda: _gone(q, running), 5, "the running job gone after its TTL")
    assert (await w.done(running, {"output": "late"})).status_code == 200
    assert (await q.status(running))["_http"] == 404


@pytest.mark.slow
async def test_the_sdk_client_purges_the_queue_and_reads_health(stand_queue, runpod_python, sdk_client):
    q, w = await stand_queue(key="k1", auth={"api_keys": ["k1"]}, queue={"lease": "60s"})
    sdk = Queue(q.ep, runpod_python, "k1", sdk_client)
    try:
        for i in range(3):
            await q.run({"input": i})
        await w.take()  # one runs; two wait
        health = await sdk.sdk("health")
        assert health["jobs"]["inQueue"] == 2 and health["jobs"]["inProgress"] == 1
        assert health["workers"] == {"idle": 0, "running": 1, "initializing": 0, "unhealthy": 0}
        assert await sdk.sdk("purge_queue") == {"removed": 2, "status": "completed"}
        assert (await q.health())["jobs"]["inQueue"] == 0
    finally:
        await sdk.close()


async def test_a_timed_out_job_is_put_on_the_stop_channel_and_its_late_result_dropped(stand_queue):
    q, w = await stand_queue(queue={"lease": "30s", "stop_grace": "30s"})
    job_id = await q.run({"input": 1, "policy": {"executionTimeout": 5000}})
    await w.take()
    stop_url = w.url("RUNPOD_WEBHOOK_GET_JOB").replace("/job-take/", "/job-stop/")
    r = await w.http.get(stop_url)  # held until the timeout puts the job on the channel
    while r.status_code == 204:
        await w.ping(job_id)
        r = await w.http.get(stop_url)
    assert r.json() == {"jobsToStop": [job_id]}
    assert (await q.status(job_id))["status"] == "TIMED_OUT"
    assert (await w.done(job_id, {"output": "late"})).status_code == 200
    s = await q.status(job_id)
    assert s["status"] == "TIMED_OUT" and "output" not in s
