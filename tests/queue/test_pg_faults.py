"""A PostgreSQL store that goes away under load, and the schema's own command (``lbproxy queue migrate``).

The database is the suite's real server (pg_server.py), stopped and started again mid-test.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
import yaml

from ..conftest import until
from ..test_cli import lbproxy

pytestmark = pytest.mark.slow


async def test_a_database_restart_under_load_loses_no_accepted_job_and_answers_503_meanwhile(
        start_queue, pg_server, pg_url):
    q = await start_queue("async", env={"CONCURRENCY": "16"}, workers={"active": 1, "max": 1},
                          queue={"store": pg_url, "lease": "3s", "ping_interval": "1s", "take_hold": "5s"})
    await q.ep.wait_workers(lambda ws: [w["state"] for w in ws] == ["ready"], "the worker", 60)
    accepted: list[str] = []
    refused: list[httpx.Response] = []
    stop = asyncio.Event()

    async def submit() -> None:
        deadline = time.monotonic() + 120  # bounded, whatever happens
        while not stop.is_set() and time.monotonic() < deadline:
            r = await q.http.post(f"{q.base}/run", json={"input": {"sleep": 0.05}})
            if r.status_code == 200:
                accepted.append(r.json()["id"])
            else:
                refused.append(r)
                await asyncio.sleep(0.05)

    submitters = [asyncio.create_task(submit()) for _ in range(4)]
    try:
        await until(lambda: len(accepted) >= 40, 30, "jobs accepted before the restart")
        await asyncio.to_thread(pg_server.stop, "fast")
        try:
            await until(lambda: len(refused) >= 5, 30, "submissions refused while the database is down")
            down_status = await q.ep.status()
        finally:
            await asyncio.to_thread(pg_server.start)
        before = len(accepted)
        await until(lambda: len(accepted) >= before + 40, 60, "jobs accepted again after the restart")
    finally:
        stop.set()
        await asyncio.gather(*submitters)
    for r in refused:
        assert r.status_code == 503 and r.headers["content-type"].startswith("application/json"), r.text
        assert r.json()["error"] == "store_unavailable" and r.json()["status"] == "UNAVAILABLE"
        assert int(r.headers["retry-after"]) >= 1
        assert pg_server.password not in r.text
    assert down_status["store"]["unavailable"] and pg_server.password not in str(down_status)

    async def all_completed() -> bool:
        states = await asyncio.gather(*(q.status(j) for j in accepted))
        return all(s["status"] == "COMPLETED" for s in states)
    await until(all_completed, 90, f"all {len(accepted)} accepted jobs COMPLETED", interval=0.5)
    log = q.ep.log()
    assert "Traceback" not in log and pg_server.password not in log
    assert "job store unavailable" in log and "job store available again" in log


def _config(tmp_path: Path, store: str, **queue: object) -> Path:
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump({"name": "q", "type": "queue", "listen": "127.0.0.1:0", "admin": "127.0.0.1:0",
                                    "worker": {"command": ["python3", "w.py"]}, "queue": {"store": store, **queue}}))
    return path


def test_queue_migrate_creates_the_schema_once_and_serve_without_migration_checks_it(tmp_path, pg_server, pg_url):
    cfg = _config(tmp_path, pg_url, migrate=False)
    r = lbproxy("serve", str(cfg))  # queue.migrate: false on an empty database: refused, saying what to run
    assert r.returncode == 2 and "lbproxy queue migrate" in r.stderr, r.stderr
    first = lbproxy("queue", "migrate", str(cfg))
    assert first.returncode == 0 and "migrated from version 0 to 1" in first.stdout, first.stdout + first.stderr
    again = lbproxy("queue", "migrate", str(cfg))
    assert again.returncode == 0 and "already at version 1" in again.stdout
    for out in (r.stderr, first.stdout, again.stdout):
        assert pg_server.password not in out and "lbproxy:***@" in out


def test_queue_migrate_says_why_it_cannot_reach_the_database_without_its_password(tmp_path, pg_server):
    bad = pg_server.url("postgres").replace(pg_server.password, "s3cret-not-this-one")
    r = lbproxy("queue", "migrate", str(_config(tmp_path, bad)))
    assert r.returncode == 1 and "password authentication failed" in r.stderr
    assert "s3cret-not-this-one" not in r.stderr + r.stdout and "Traceback" not in r.stderr
    sqlite = lbproxy("queue", "migrate", str(_config(tmp_path, f"sqlite:///{tmp_path}/q.db")))
    assert sqlite.returncode == 0 and "nothing to migrate" in sqlite.stdout
