"""A job accepted with 200 survives lbproxy being SIGKILLed: it is committed before the answer."""

from __future__ import annotations

import json
import signal
import sys

import httpx
import pytest

from ..conftest import base_config, deep_merge, launch, pid_alive, until
from .conftest import HERE
from .test_protocol_edges import Stand

pytestmark = pytest.mark.slow


async def test_accepted_jobs_survive_sigkill_and_restart_and_running_ones_are_requeued(tmp_path):
    dump = tmp_path / "env"
    dump.mkdir()
    cfg = base_config(**{
        "type": "queue", "workers": {"active": 1, "max": 1},
        "queue": {"ping_interval": "1s", "lease": "30s", "take_hold": "1s"},
        "worker": {"command": [sys.executable, str(HERE / "env_worker.py")], "stop_grace": "2s",
                   "env": {"ENV_DUMP_DIR": str(dump)}}})
    cfg = deep_merge(cfg, {"timeouts": {"execution": "off"}})
    first = await launch(cfg, tmp_path)
    pids: set[int] = set()
    second = None
    try:
        files = await until(lambda: list(dump.glob("*.json")), 20, "the first worker's environment")
        w = Stand(json.loads(files[0].read_text()))
        base = f"{first.url}/v2/{cfg['name']}"
        async with httpx.AsyncClient(timeout=30) as http:
            accepted = []
            for i in range(50):
                r = await http.post(f"{base}/run", json={"input": {"n": i}})
                assert r.status_code == 200
                accepted.append(r.json()["id"])
            running = (await w.take()).json()["id"]  # taken by a worker of the process about to die
            pids.update(x["pid"] for x in await first.workers())
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)
            # Its worker goes with it (the local backend's guard); the next lbproxy could not reach it anyway.
            await until(lambda: not any(pid_alive(p) for p in pids), 15, "the dead lbproxy's worker gone")
            await w.http.aclose()
            for f in files:
                f.unlink()

            second = await launch(cfg, tmp_path)
            files = await until(lambda: list(dump.glob("*.json")), 20, "the new worker's environment")
            w = Stand(json.loads(files[0].read_text()))
            seen = []
            while len(seen) < len(accepted):
                r = await w.take(batch=20)
                assert r.status_code == 200, f"only {len(seen)} of {len(accepted)} jobs came back"
                seen += [j["id"] for j in r.json()]
            assert sorted(seen) == sorted(accepted)  # none lost, none twice
            s = (await http.get(f"{second.url}/v2/{cfg['name']}/status/{running}")).json()
            assert s["retries"] == 1  # it was running when lbproxy died: counted as a lost worker
            await w.http.aclose()
    finally:
        if first.proc.poll() is None:
            first.proc.kill()
        if second is not None:
            assert second.terminate() == 0
            pids.update(second.seen_pids)
        await until(lambda: not any(pid_alive(p) for p in pids), 10, "every worker gone")
