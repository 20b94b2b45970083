"""SIGHUP reloads the config (issue 10, section 4): what may change live changes without dropping a connection;
an invalid file, or a change that needs a restart, is refused in one line and the running config is kept."""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
import yaml

from lbproxy.config import parse_config
from lbproxy.reload import changes

from .conftest import Endpoint, error_of, until


def cfg(**data: Any):
    return parse_config({"name": "r", "worker": {"command": ["w"]}, **data}, environ={})


def test_live_keys_and_restart_keys_are_told_apart():
    old = cfg(workers={"max": 2})
    live, restart = changes(old, cfg(workers={"max": 5, "concurrency": 2}, auth={"api_keys": ["k-0123456789"]},
                                     timeouts={"wait": "5s"}, log={"access": True}))
    assert live == ["auth.api_keys", "log.access", "timeouts.wait", "workers.concurrency", "workers.max"]
    assert restart == []
    live, restart = changes(old, cfg(workers={"max": 2, "gpus": 2}, listen="127.0.0.1:1",
                                     worker={"command": ["other"], "env": {"A": "1"}}))
    assert live == [] and restart == ["listen", "worker.command", "worker.env.A", "workers.gpus"]
    assert changes(old, cfg(workers={"max": 2})) == ([], [])


def _rewrite(ep: Endpoint, **changes: Any) -> None:
    path = ep.log_path.with_suffix(".yaml")
    data = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        data[key] = value
    path.write_text(yaml.safe_dump(data))


async def _hup(ep: Endpoint, text: str) -> None:
    before = ep.log().count(text)
    ep.proc.send_signal(signal.SIGHUP)
    await until(lambda: ep.log().count(text) > before, 10, f"{text!r} in the log")


async def test_sighup_applies_keys_and_limits_live_without_dropping_a_connection(start_endpoint):
    ep = await start_endpoint(workers={"active": 1, "max": 2})
    await ep.wait_workers(lambda ws: [w["state"] for w in ws] == ["ready"], "the worker")
    async with httpx.AsyncClient(timeout=30) as c:
        assert (await c.get(ep.url + "/echo")).status_code == 200  # a keep-alive connection, kept across
        slow = asyncio.create_task(c.get(ep.url + "/sleep?s=2", headers={"Authorization": "Bearer k-0123456789"}))
        await ep.wait_workers(lambda ws: ws[0]["in_flight"] == 1, "a request in flight")
        _rewrite(ep, auth={"api_keys": ["k-0123456789"]}, workers={"active": 1, "max": 3, "concurrency": 4})
        await _hup(ep, "reloaded ")
        r = await c.get(ep.url + "/echo")
        assert r.status_code == 401 and error_of(r) == "unauthorized"  # the new key is required now
        assert (await c.get(ep.url + "/echo", headers={"Authorization": "Bearer k-0123456789"})).status_code == 200
        assert (await slow).status_code == 200  # the request in flight went on
    status = await ep.status()
    assert status["scaling"]["max"] == 3
    assert ep.proc.poll() is None
    assert "auth.api_keys, workers.concurrency, workers.max" in ep.log()


async def test_a_reloaded_workers_active_bills_the_running_worker_at_the_active_price(start_endpoint, client):
    ep = await start_endpoint(workers={"active": 0, "max": 1}, cost={"category": "24gb"})
    assert (await client.get(ep.url + "/echo")).status_code == 200
    [w] = await ep.wait_workers(lambda ws: len(ws) == 1, "the worker")
    assert w["tier"] == "flex"
    _rewrite(ep, workers={"active": 1, "max": 1})
    await _hup(ep, "reloaded ")
    [w] = (await ep.status())["workers"]
    assert w["tier"] == "active"


async def test_sighup_refuses_an_invalid_file_or_a_restart_change_and_keeps_running(start_endpoint, client):
    ep = await start_endpoint()
    path = ep.log_path.with_suffix(".yaml")
    good = path.read_text()
    _rewrite(ep, workers={"max": -1})
    await _hup(ep, "reload refused")
    [refused] = [line for line in ep.log().splitlines() if "reload refused" in line]
    assert "is not a valid config" in refused and "workers.max" in refused
    path.write_text(good)
    _rewrite(ep, listen="127.0.0.1:1", worker={**yaml.safe_load(good)["worker"], "stop_grace": "1s"})
    await _hup(ep, "can only change with a restart")
    assert "listen, worker.stop_grace can only change with a restart" in ep.log()
    assert (await client.get(ep.url + "/echo")).status_code == 200  # still serving, on the old config
    assert ep.proc.poll() is None
