"""Several replicas, one queue: two ``lbproxy serve`` processes on one PostgreSQL database, real SDK workers.

Each replica runs its own local workers and serves the whole client API; a job submitted to one runs on a
worker of either; one replica leads scaling (the advisory lock). A replica SIGKILLed mid-run loses its workers
with it; their jobs come back when their leases lapse and finish on the other replica's worker.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import Endpoint, base_config, launch, pid_alive, until
from ..test_reload import _hup, _rewrite
from .conftest import queue_config

pytestmark = pytest.mark.slow


class Replicas:
    def __init__(self, eps: list[Endpoint], runs: Path) -> None:
        self.eps = eps
        self.runs = runs
        self.http = httpx.AsyncClient(timeout=30)

    def base(self, i: int) -> str:
        ep = self.eps[i % len(self.eps)]
        return f"{ep.url}/v2/{ep.config['name']}"

    async def run(self, i: int, body: dict[str, Any]) -> str:
        r = await self.http.post(f"{self.base(i)}/run", json=body)
        assert r.status_code == 200, r.text
        job_id: str = r.json()["id"]
        return job_id

    async def status(self, i: int, job_id: str) -> dict[str, Any]:
        r = await self.http.get(f"{self.base(i)}/status/{job_id}")
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data

    async def all_done(self, i: int, ids: list[str], timeout: float) -> list[dict[str, Any]]:
        """Waits on /health's count (one query a poll, not one per job), then reads every job once."""
        async def counted() -> bool:
            health = (await self.http.get(f"{self.base(i)}/health")).json()
            return bool(health["jobs"]["completed"] >= len(ids))
        await until(counted, timeout, f"{len(ids)} jobs COMPLETED", interval=0.1)
        return list(await asyncio.gather(*(self.status(i, j) for j in ids)))

    def runs_per_job(self) -> collections.Counter[str]:
        text = self.runs.read_text() if self.runs.exists() else ""
        return collections.Counter(line.split()[0] for line in text.splitlines() if line)

    async def workers(self, i: int) -> set[str]:
        return {w["id"] for w in await self.eps[i].workers("ready")}

    async def leaders(self) -> list[bool]:
        return [bool((await ep.status())["leading"]) for ep in self.eps if ep.proc.poll() is None]


@pytest.fixture
async def two_replicas(runpod_python: Path, pg_url: str, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    started: list[Endpoint] = []
    opened: list[Replicas] = []

    async def start(kind: str = "async", **overrides: Any) -> Replicas:
        runs = tmp_path / "runs.log"
        env = {"RUNS_LOG": str(runs), "CONCURRENCY": "4"}
        cfg = queue_config(runpod_python, kind, env, workers={"active": 1, "max": 2},
                           queue={"store": pg_url, "lease": "3s", "ping_interval": "1s", "take_hold": "5s"},
                           **overrides)
        for name in ("a", "b"):  # a directory each: their worker records (leftovers) are their own
            (tmp_path / name).mkdir(exist_ok=True)
            started.append(await launch(base_config(**cfg), tmp_path / name))
        replicas = Replicas(started[-2:], runs)
        opened.append(replicas)
        for ep in replicas.eps:
            await ep.wait_workers(lambda ws: [w["state"] for w in ws] == ["ready"], "each replica's worker", 60)
        await until(lambda: _one(replicas.leaders()), 20, "exactly one leader")
        return replicas

    yield start
    for replicas in opened:
        await replicas.http.aclose()
    for ep in started:
        if ep.proc.poll() is None:
            assert ep.terminate() == 0, ep.log()[-3000:]
        with contextlib.suppress(Exception):
            await ep.status()
        left = [pid for pid in ep.seen_pids if pid_alive(pid)]
        assert not left, f"worker processes left behind: {left}"


async def _one(leaders: Any) -> bool:
    return (await leaders).count(True) == 1


async def test_two_replicas_share_one_queue_and_a_killed_one_s_jobs_finish_on_the_other(two_replicas):
    r = await two_replicas()
    a_workers, b_workers = await r.workers(0), await r.workers(1)
    # Healthy: 100 jobs submitted alternately; each runs exactly once, on the workers of both replicas.
    first = [await r.run(i, {"input": {"sleep": 0.2, "n": i}}) for i in range(100)]
    done = await r.all_done(1, first, 60)
    assert set(r.runs_per_job().values()) == {1} and set(r.runs_per_job()) == set(first)
    ran_on = {s["workerId"] for s in done}
    assert ran_on == a_workers | b_workers, "every replica's worker took jobs"
    submitted_to_a = set(first[0::2])
    assert any(s["id"] in submitted_to_a and s["workerId"] in b_workers for s in done), \
        "a job submitted to one replica ran on the other's worker"
    health = (await r.http.get(f"{r.base(0)}/health")).json()
    assert health["jobs"]["completed"] == 100 and health["jobs"]["retried"] == 0

    # 100 more; SIGKILL replica b while both replicas' workers are running jobs.
    second = [await r.run(i, {"input": {"sleep": 1.0, "n": 100 + i}}) for i in range(100)]

    async def both_busy() -> bool:
        running = [s["workerId"] for s in await asyncio.gather(*(r.status(0, j) for j in second))
                   if s["status"] == "IN_PROGRESS"]
        return bool(set(running) & a_workers) and bool(set(running) & b_workers)
    await until(both_busy, 30, "jobs running on both replicas' workers", interval=0.05)

    async def b_holds_jobs() -> bool:  # b's own count, read just before the kill: the SDK takes jobs in rounds
        return any(w["in_flight"] for w in await r.eps[1].workers())  # (a round's jobs done, up to 1 s with none)
    await until(b_holds_jobs, 30, "replica b's worker holding jobs", interval=0.01)
    r.eps[1].proc.send_signal(signal.SIGKILL)
    r.eps[1].proc.wait(10)
    done = await r.all_done(0, first + second, 90)
    assert all(s["status"] == "COMPLETED" for s in done)
    retried = {s["id"] for s in done if s.get("retries")}
    assert retried and retried <= set(second), "the killed replica's running jobs were requeued"
    runs = r.runs_per_job()
    assert {j for j, n in runs.items() if n > 1} <= retried, "only requeued jobs ran twice"
    assert {s["workerId"] for s in done if s["id"] in retried} <= a_workers | await r.workers(0)
    health = (await r.http.get(f"{r.base(0)}/health")).json()
    assert health["jobs"]["completed"] == 200 and health["jobs"]["retried"] == len(retried)
    await until(lambda: _leading(r.eps[0]), 10, "the surviving replica leads")


async def _leading(ep: Endpoint) -> bool:
    return bool((await ep.status())["leading"])


async def test_status_stream_and_cancel_work_from_either_replica(two_replicas, tmp_path):
    r = await two_replicas("generator")
    job = await r.run(0, {"input": {"n": 4, "interval": 0.3}})
    chunks: list[Any] = []
    state = ""

    async def read_stream() -> bool:
        nonlocal state
        body = (await r.http.get(f"{r.base(1)}/stream/{job}")).json()
        chunks.extend(c["output"] for c in body["stream"])
        state = body["status"]
        return state == "COMPLETED"
    await until(read_stream, 30, "the stream read from the other replica to end", interval=0.1)
    assert chunks == [{"chunk": i} for i in range(4)] and state == "COMPLETED"
    assert (await r.status(1, job))["output"] == chunks  # return_aggregate_stream

    long = await r.run(1, {"input": {"n": 100, "interval": 0.2}})
    await until(lambda: _in_progress(r, 0, long), 30, "the long job running")
    runs_on = (await r.status(0, long))["workerId"]
    owner = 0 if runs_on in await r.workers(0) else 1
    other = 1 - owner
    # Cancelled through the replica whose worker does not run it: the stop must cross to the other replica.
    cancelled = (await r.http.post(f"{r.base(other)}/cancel/{long}")).json()
    assert cancelled["status"] == "CANCELLED"
    assert (await r.status(owner, long))["status"] == "CANCELLED"

    async def let_go() -> bool:
        health = (await r.http.get(f"{r.base(owner)}/health")).json()
        return health["workers"]["running"] == 0
    await until(let_go, 15, "the worker running the cancelled job to let go of it (it would stream for 20 s)")
    assert (await r.status(owner, long))["status"] == "CANCELLED"
    assert r.runs_per_job()[long] == 1


async def _in_progress(r: Replicas, i: int, job_id: str) -> bool:
    return (await r.status(i, job_id))["status"] == "IN_PROGRESS"



async def test_a_reload_of_the_leading_replica_keeps_its_new_scaling_settings(two_replicas):
    # The advisory-lock role hands the controller its settings every second: they must be the reloaded ones.
    r = await two_replicas(timeouts={"idle": "1s"})
    [leader] = [ep for ep in r.eps if await _leading(ep)]
    _rewrite(leader, workers={**leader.config["workers"], "active": 2})
    await _hup(leader, "reloaded ")
    await leader.wait_workers(lambda ws: [w["state"] for w in ws] == ["ready", "ready"], "two ready workers", 60)
    # With the startup settings handed back, the idle second worker would be drained within ~2 s (idle 1 s):
    # both must stay through a window of several role steps. (Sleeps pace the polls of that window.)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = [w["state"] for w in await leader.workers()]
        assert states == ["ready", "ready"], f"the reloaded workers.active was undone: {states}"
        await asyncio.sleep(0.2)
