"""Unchanged runpod SDK workers and clients against a real ``lbproxy serve`` (type: queue), over loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

import pytest

from ..conftest import until

pytestmark = pytest.mark.slow


async def test_sync_handler_serves_sdk_run_sync_and_run_with_status(shared_sync_queue):
    q = shared_sync_queue
    before = (await q.health())["jobs"]
    result = await q.sdk("run_sync", input={"prompt": "hi"})
    out = result["output"]
    assert out["echo"] == {"prompt": "hi"}
    assert out["skip_checks"] == "true"  # never a connection to a public DNS server
    assert out["ping_interval"] == "1000"
    assert out["worker"].startswith("test-")

    ran = await q.sdk("run_status", input={"prompt": "again", "sleep": 0.3})
    assert ran["first"] in ("IN_QUEUE", "IN_PROGRESS")
    assert ran["output"]["echo"] == {"prompt": "again", "sleep": 0.3}
    assert ran["final"] == "COMPLETED"
    status = await q.status(ran["id"])
    assert status["status"] == "COMPLETED" and status["delayTime"] >= 0 and status["executionTime"] >= 300
    assert status["workerId"] == out["worker"]
    health = await q.sdk("health")
    assert health["jobs"]["completed"] == before["completed"] + 2 and health["jobs"]["failed"] == before["failed"]
    assert health["workers"]["idle"] >= 1 and health["workers"]["running"] == 0


async def test_the_handler_gets_s3config_and_policy_at_the_top_level_of_the_job(shared_sync_queue):
    q = shared_sync_queue
    s3 = {"accessId": "a", "accessSecret": "b", "bucketName": "c", "endpointUrl": "http://127.0.0.1:1"}
    job_id = await q.run({"input": {"x": 1}, "s3Config": s3, "policy": {"executionTimeout": 60000}})
    done = await q.wait_state(job_id, "COMPLETED")
    assert done["output"]["s3Config"] == s3
    assert done["output"]["keys"] == ["id", "input", "policy", "s3Config"]


async def test_progress_update_shows_in_status_while_the_job_runs(shared_sync_queue):
    q = shared_sync_queue
    job_id = await q.run({"input": {"progress": {"pct": 50}, "sleep": 2}})

    async def progressed():
        s = await q.status(job_id)
        return s if s["status"] == "IN_PROGRESS" and s.get("output") == {"pct": 50} else None
    await until(progressed, 30, "progress output in /status")
    done = await q.wait_state(job_id, "COMPLETED")
    assert done["output"]["echo"]["sleep"] == 2  # the final result replaces the progress


async def test_generator_handler_streams_chunks_once_each_and_aggregates_them(start_queue):
    q = await start_queue("generator")
    result = await q.sdk("stream", input={"n": 4, "interval": 0.3})
    assert result["chunks"] == [{"chunk": i} for i in range(4)]  # each chunk once, in order
    assert result["final"] == "COMPLETED"
    assert result["output"] == [{"chunk": i} for i in range(4)]  # return_aggregate_stream


async def test_handler_error_is_failed_with_the_error_and_not_retried(shared_sync_queue):
    q = shared_sync_queue
    before = (await q.health())["jobs"]
    job_id = await q.run({"input": {"fail": True}})
    failed = await q.wait_state(job_id, "FAILED")
    error = json.loads(failed["error"])  # the SDK sends a JSON string
    assert error["error_message"] == "the handler failed on purpose"
    assert "retries" not in failed
    returned = await q.run({"input": {"error": "handled"}})
    assert (await q.wait_state(returned, "FAILED"))["error"] == "handled"
    health = await q.health()
    assert health["jobs"]["failed"] == before["failed"] + 2 and health["jobs"]["retried"] == before["retried"]


async def test_async_handler_with_concurrency_takes_a_batch_and_runs_it_at_once(start_queue):
    q = await start_queue("async", env={"CONCURRENCY": "3"}, workers={"max": 1})
    await q.sdk("run_sync", input={"warm": True})  # one warm worker, polling with batch takes
    ids = [await q.run({"input": {"sleep": 1.5, "n": i}}) for i in range(3)]
    done = [await q.wait_state(i, "COMPLETED") for i in ids]
    outs = [d["output"] for d in done]
    assert len({o["pid"] for o in outs}) == 1
    assert max(o["started"] for o in outs) < min(o["ended"] for o in outs)  # all three ran together


async def test_cancel_of_a_running_async_job_stops_it_on_the_worker(start_queue, tmp_path):
    q = await start_queue("async", env={"CONCURRENCY": "2"}, workers={"max": 1})
    marker = tmp_path / "cancelled"
    result = await q.sdk("cancel", input={"sleep": 60, "marker": str(marker)})
    assert result["answer"]["status"] == "CANCELLED" and result["final"] == "CANCELLED"
    await until(marker.exists, 20, "the handler's task cancelled through job-stop")
    before = await q.ep.workers()
    after = await q.sdk("run_sync", input={"next": 1})  # the same worker goes on serving
    assert after["output"]["worker"] == before[0]["id"]


async def test_execution_timeout_of_an_async_job_stops_it_and_keeps_the_worker(start_queue, tmp_path):
    q = await start_queue("async", env={"CONCURRENCY": "2"}, workers={"max": 1})
    marker = tmp_path / "stopped"
    job_id = await q.run({"input": {"sleep": 60, "marker": str(marker)}, "policy": {"executionTimeout": 5000}})
    timed_out = await q.wait_state(job_id, "TIMED_OUT", timeout=30)
    assert 5000 <= timed_out["executionTime"] < 10000
    await until(marker.exists, 20, "the handler's task cancelled through job-stop")
    workers = await q.ep.workers()
    assert [(w["id"], w["state"]) for w in workers] == [(timed_out["workerId"], "ready")]  # not replaced


async def test_execution_timeout_of_a_sync_job_replaces_its_worker_and_drops_the_late_result(start_queue):
    q = await start_queue("sync", timeouts={"execution": "5s"}, workers={"max": 1, "active": 1},
                          worker={"stop_grace": "1s"})
    first = (await q.ep.wait_workers(lambda ws: ws and ws[0]["state"] == "ready", "a ready worker"))[0]
    job_id = await q.run({"input": {"sleep": 12}})
    await q.wait_state(job_id, "TIMED_OUT", timeout=30)
    # A sync handler blocks the SDK's loop: the worker is stopped after queue.stop_grace and replaced.
    await q.ep.wait_workers(lambda ws: any(w["id"] != first["id"] and w["state"] == "ready" for w in ws)
                            and all(w["id"] != first["id"] for w in ws), "a replacement worker", timeout=40)
    again = await q.status(job_id)
    assert again["status"] == "TIMED_OUT"
    assert (await q.sdk("run_sync", input={"after": 1}))["output"]["echo"] == {"after": 1}


async def test_refresh_worker_replaces_the_worker_after_its_job(start_queue):
    q = await start_queue("refresh", workers={"max": 1})
    first = (await q.sdk("run_sync", input={"a": 1}))["output"]
    second = (await q.sdk("run_sync", input={"b": 2}))["output"]
    assert first["worker"] != second["worker"] and first["pid"] != second["pid"]


async def test_a_worker_that_dies_holding_a_job_gets_it_requeued(start_queue):
    q = await start_queue("sync", workers={"max": 1})
    job_id = await q.run({"input": {"sleep": 30}})
    running = await q.wait_state(job_id, "IN_PROGRESS")
    worker = next(w for w in await q.ep.workers() if w["id"] == running["workerId"])
    assert len(group(worker["process_group"])) >= 2  # the SDK's main process and its ping process
    os.kill(worker["pid"], signal.SIGKILL)  # the main process only: its ping child would go on renewing
    await until(lambda: not group(worker["process_group"]), 10, "the worker's whole process group gone")
    # Requeued at once (the process exit is the signal) and taken by a new worker.
    async def retaken():
        s = await q.status(job_id)
        return s if s.get("workerId") not in (None, worker["id"]) and s["status"] == "IN_PROGRESS" else None
    s = await until(retaken, 30, "the job running on a new worker")
    assert s["retries"] == 1
    assert (await q.health())["jobs"]["retried"] == 1


def group(pgid: int) -> list[int]:
    """Live processes of a process group (zombies excluded)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    found.append(int(entry.name))
    return found


async def test_a_job_whose_workers_keep_dying_fails_as_worker_lost_after_max_attempts(start_queue):
    q = await start_queue("sync", queue={"max_attempts": 2})
    job_id = await q.run({"input": {"exit": True}})
    failed = await q.wait_state(job_id, "FAILED", timeout=60)
    assert failed["error"] == "worker lost" and failed["retries"] == 1


async def test_a_frozen_worker_loses_its_job_when_the_lease_runs_out(start_queue):
    q = await start_queue("sync", workers={"max": 2}, queue={"max_attempts": 1})
    job_id = await q.run({"input": {"sleep": 30}})
    running = await q.wait_state(job_id, "IN_PROGRESS")
    worker = next(w for w in await q.ep.workers() if w["id"] == running["workerId"])
    os.killpg(worker["process_group"], signal.SIGSTOP)  # the handler and its ping process: no more pings
    try:
        failed = await q.wait_state(job_id, "FAILED", timeout=30)
        assert failed["error"] == "worker lost"
        # Silent for a whole lease: unhealthy, no more jobs; replaced once it holds none.
        await q.ep.wait_workers(lambda ws: all(w["id"] != worker["id"] or w["state"] != "ready" for w in ws),
                                "the frozen worker out of rotation")
    finally:
        os.killpg(worker["process_group"], signal.SIGCONT)


async def test_a_worker_holding_a_job_is_not_stopped_for_idleness(start_queue):
    q = await start_queue("sync", timeouts={"idle": "1s"}, workers={"max": 1})
    job_id = await q.run({"input": {"sleep": 4}})
    done = await q.wait_state(job_id, "COMPLETED", timeout=40)
    assert "retries" not in done  # never requeued: its worker was not stopped under it
    assert done["executionTime"] >= 4000


async def test_the_queue_example_serves_a_job_to_the_sdk_client(start_endpoint, runpod_python):
    import yaml

    from ..conftest import ROOT
    from .conftest import Queue

    cfg = yaml.safe_load((ROOT / "examples" / "queue.yaml").read_text())
    cfg.pop("listen"), cfg.pop("admin")
    cfg["worker"]["command"][0] = str(runpod_python)  # the README's .venv-worker, built once by the fixture
    q = Queue(await start_endpoint(**cfg), runpod_python)
    try:
        # A fresh client process, pointed at lbproxy by RUNPOD_ENDPOINT_BASE_URL alone, as the README says.
        result = await q.sdk_process("run_sync", input={"prompt": "hello world"})
        assert result["output"]["echo"] == "hello world" and result["output"]["words"] == 2
    finally:
        await q.close()


async def test_cancel_of_a_running_sync_job_replaces_its_worker(start_queue):
    q = await start_queue("sync", workers={"max": 1})
    result = await q.sdk("cancel", input={"sleep": 30})
    assert result["final"] == "CANCELLED"
    job = await q.status(result["id"])
    # The SDK cannot interrupt a sync handler: after queue.stop_grace its worker goes, and a new one serves.
    await q.ep.wait_workers(lambda ws: all(w["id"] != job["workerId"] for w in ws), "the blocked worker gone",
                            timeout=30)
    after = await q.sdk("run_sync", input={"next": 1})
    assert after["output"]["worker"] != job["workerId"]
    assert (await q.status(result["id"]))["status"] == "CANCELLED"
