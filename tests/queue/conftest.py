"""Queue endpoint fixtures: the real ``runpod`` SDK (pinned) in a virtualenv of its own, built once.

The SDK cannot share lbproxy's environment (through botocore it pins python-dateutil < 3, which kubernetes
37 refuses), as a user's worker image has its own environment too: ``sdk_venv.py`` builds it once. Every SDK
process gets RUNPOD_SKIP_AUTO_SYSTEM_CHECKS=true: its fitness check would otherwise connect to a public DNS
server.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import Endpoint, deep_merge, until
from . import sdk_venv

HERE = Path(__file__).resolve().parent
SDK_WORKER = HERE / "sdk_worker.py"
SDK_CLIENT = HERE / "sdk_client.py"
SAFE_ENV = {"RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true", "RUNPOD_SKIP_GPU_CHECK": "true"}


@pytest.fixture(scope="session")
def runpod_python() -> Path:
    return sdk_venv.build()


def queue_config(python: Path, kind: str = "sync", env: dict[str, str] | None = None,
                 **overrides: Any) -> dict[str, Any]:
    """A queue endpoint whose workers run ``sdk_worker.py`` with handler ``kind``; short leases for tests."""
    cfg: dict[str, Any] = {
        "type": "queue",
        "workers": {"active": 0, "max": 2},
        "timeouts": {"idle": "60s"},
        "queue": {"ping_interval": "1s", "lease": "4s", "take_hold": "5s", "stop_grace": "3s"},
        "worker": {"command": [str(python), str(SDK_WORKER)], "stop_grace": "2s",
                   "env": {"HANDLER": kind, "RUNPOD_LOG_LEVEL": "INFO", **(env or {})}},
    }
    return deep_merge(cfg, overrides)


class SdkClient:
    """One long-lived ``sdk_client.py --serve`` process for the session: the SDK is imported once."""

    def __init__(self, python: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "LBPROXY_"))}
        env.update(SAFE_ENV)
        self.proc = subprocess.Popen([str(python), str(SDK_CLIENT), "--serve"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, text=True)
        self.lock = threading.Lock()

    def call(self, op: str, base: str, args: dict[str, Any]) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self.lock:
            self.proc.stdin.write(json.dumps({"op": op, "base": base, "args": args}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        assert line, f"the SDK client process exited ({self.proc.poll()})"
        answer = json.loads(line)
        assert "ok" in answer, f"sdk client {op} failed:\n{answer['error']}"
        return answer["ok"]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def sdk_client(runpod_python: Path) -> Iterator[SdkClient]:
    client = SdkClient(runpod_python)
    yield client
    client.close()


class Queue:
    """Raw HTTP access to a queue endpoint's client API, plus the SDK client in its own venv."""

    def __init__(self, ep: Endpoint, python: Path, key: str | None = None, client: SdkClient | None = None) -> None:
        self.ep = ep
        self.client = client
        self.python = python
        self.key = key
        self.base = f"{ep.url}/v2/{ep.config['name']}"
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.AsyncClient(timeout=60, headers=headers)

    async def close(self) -> None:
        await self.http.aclose()

    async def run(self, body: dict[str, Any]) -> str:
        r = await self.http.post(f"{self.base}/run", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "IN_QUEUE"
        job_id: str = r.json()["id"]
        return job_id

    async def status(self, job_id: str) -> dict[str, Any]:
        r = await self.http.get(f"{self.base}/status/{job_id}")
        data: dict[str, Any] = r.json()
        data["_http"] = r.status_code
        return data

    async def wait_state(self, job_id: str, *states: str, timeout: float = 30.0) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            s = await self.status(job_id)
            return s if s["status"] in states else None
        result: dict[str, Any] = await until(reached, timeout, f"job {job_id} in {states}", interval=0.05)
        return result

    async def health(self) -> dict[str, Any]:
        data: dict[str, Any] = (await self.http.get(f"{self.base}/health")).json()
        return data

    async def sdk(self, op: str, timeout: float = 60.0, **args: Any) -> Any:
        """One operation of the real runpod client (``sdk_client.py``, in the SDK's venv); its JSON answer."""
        args = {"endpoint": self.ep.config["name"], "key": self.key or "none", **args}
        if self.client is not None:
            return await asyncio.wait_for(asyncio.to_thread(self.client.call, op, f"{self.ep.url}/v2", args), timeout)
        return await self.sdk_process(op, timeout, **args)

    async def sdk_process(self, script: str, timeout: float = 60.0, **args: Any) -> Any:
        """The same in a fresh process, pointed at lbproxy by RUNPOD_ENDPOINT_BASE_URL as a user would."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "LBPROXY_"))}
        env.update(SAFE_ENV)
        env["RUNPOD_ENDPOINT_BASE_URL"] = f"{self.ep.url}/v2"
        args = {"endpoint": self.ep.config["name"], "key": self.key or "none", **args}
        proc = await asyncio.create_subprocess_exec(
            str(self.python), str(SDK_CLIENT), script, json.dumps(args),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except BaseException:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode == 0, f"sdk client {script} failed ({proc.returncode}):\n{err.decode()[-3000:]}"
        return json.loads(out.decode().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def shared_sync_endpoint(runpod_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """One endpoint of sync SDK workers for the tests that only submit jobs to it (each worker start costs
    seconds of SDK import). Tests on it must not depend on what the others left (compare counts, not totals)."""
    from ..conftest import base_config, launch, pid_alive

    cfg = base_config(**queue_config(runpod_python, "sync"))
    ep = asyncio.run(launch(cfg, tmp_path_factory.mktemp("shared-queue")))
    yield ep
    assert ep.terminate() == 0, ep.log()[-3000:]
    assert not [pid for pid in ep.seen_pids if pid_alive(pid)]


@pytest.fixture
async def shared_sync_queue(shared_sync_endpoint: Endpoint, runpod_python: Path,
                            sdk_client: SdkClient) -> AsyncIterator[Queue]:
    q = Queue(shared_sync_endpoint, runpod_python, None, sdk_client)
    yield q
    await q.close()


@pytest.fixture
async def start_queue(start_endpoint: Callable[..., Any], runpod_python: Path,
                      sdk_client: SdkClient) -> AsyncIterator[Any]:
    """``q = await start_queue(kind, **overrides)``: lbproxy serving a queue endpoint of SDK workers."""
    opened: list[Queue] = []

    async def start(kind: str = "sync", env: dict[str, str] | None = None, key: str | None = None,
                    **overrides: Any) -> Queue:
        ep = await start_endpoint(**queue_config(runpod_python, kind, env, **overrides))
        q = Queue(ep, runpod_python, key, sdk_client)
        opened.append(q)
        return q

    yield start
    for q in opened:
        await q.close()
