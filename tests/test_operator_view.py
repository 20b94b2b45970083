"""What an operator and a client see (issue 10, section 6): the access log, request ids on every answer of
lbproxy's own, Retry-After where a client should come back."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

from .conftest import error_of, until
from .test_proxy_http import connect, read_response

ACCESS = re.compile(r"lbproxy\.access: (\S+) (\S+) (\d+) worker=(\S+) wait=([\d.]+)s duration=([\d.]+)s "
                    r"bytes=(\d+) request_id=(\S+)$", re.M)


async def test_the_access_log_has_a_line_per_request(start_endpoint, client):
    ep = await start_endpoint(log={"access": True})
    r = await client.get(ep.url + "/echo/a?token=secret", headers={"X-Request-Id": "req-1"})
    await client.get(ep.url + "/status/404")
    # The line is written after the response went out: the client can be faster than the log.
    lines = await until(lambda: (found := ACCESS.findall(ep.log())) and len(found) >= 2 and found, 10,
                        "two access lines")
    assert len(lines) == 2, ep.log()[-2000:]
    method, path, status, worker, wait, duration, size, rid = lines[0]
    assert (method, path, status, rid) == ("GET", "/echo/a", "200", "req-1")  # no query: it may hold tokens
    assert worker == r.headers["x-lbproxy-worker-id"] and int(size) == len(r.content)
    assert float(wait) <= float(duration)
    assert lines[1][2] == "404"
    assert "secret" not in ep.log()


async def test_json_logs_are_one_object_per_line_with_the_access_fields(start_endpoint, client):
    ep = await start_endpoint(log={"access": True, "format": "json"})
    await client.get(ep.url + "/echo", headers={"X-Request-Id": "req-2"})
    await until(lambda: '"lbproxy.access"' in ep.log(), 10, "the access line")
    records = [json.loads(line) for line in ep.log().splitlines() if line.strip()]  # every line parses
    [access] = [x for x in records if x["logger"] == "lbproxy.access"]
    assert {k: access[k] for k in ("method", "path", "status", "request_id")} == \
        {"method": "GET", "path": "/echo", "status": 200, "request_id": "req-2"}
    assert access["worker"] and access["duration_s"] >= access["wait_s"] >= 0 and access["ts"] > 0
    assert all({"time", "level", "logger", "message", "endpoint"} <= set(x) for x in records)


async def test_no_access_log_by_default(start_endpoint, client):
    ep = await start_endpoint()
    await client.get(ep.url + "/echo")
    assert "lbproxy.access" not in ep.log()


async def test_every_answer_of_lbproxys_own_has_a_request_id(start_endpoint, client):
    ep = await start_endpoint(auth={"api_keys": ["k-1234567890"]}, limits={"max_body_size": 10})
    key = {"Authorization": "Bearer k-1234567890"}
    answers = {
        401: await client.get(ep.url + "/echo"),
        413: await client.post(ep.url + "/echo", content=b"x" * 100, headers=key),
    }
    reader, writer = await connect(ep)
    writer.write(b"GET http://elsewhere/ HTTP/1.1\r\nHost: x\r\n" + b"Authorization: Bearer k-1234567890\r\n\r\n"
                 + b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 70_000 + b"\r\n\r\n")
    for status in (400, 431):
        line, headers, _ = await read_response(reader)
        assert line.startswith(b"HTTP/1.1 %d" % status), line
        assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"]), headers
    writer.close()
    for status, r in answers.items():
        assert r.status_code == status and error_of(r)
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    r = await client.get(ep.url + "/echo", headers={"X-Request-Id": "mine"})
    assert r.status_code == 401 and r.headers["x-request-id"] == "mine"  # a sane id of the client's is kept


@pytest.mark.slow
async def test_queue_full_and_no_worker_say_when_to_come_back(start_endpoint):
    ep = await start_endpoint(workers={"max": 1, "concurrency": 1}, limits={"max_queue": 1},
                              timeouts={"wait": "1s"}, worker={"env": {"ECHO_INIT_DELAY": "3"}})
    async with httpx.AsyncClient(timeout=30) as c:
        first = asyncio.create_task(c.get(ep.url + "/echo"))  # queued for the cold start
        await ep.wait_workers(lambda ws: len(ws) == 1, "a starting worker")
        r = await c.get(ep.url + "/echo")  # the queue (1) is full
        assert r.status_code == 429 and error_of(r) == "queue_full"
        assert int(r.headers["retry-after"]) >= 1 and r.headers["x-request-id"]
        r = await first  # timeouts.wait (1s) while the worker loads (3s): told it is starting, and when to retry
    assert r.status_code == 503 and error_of(r) == "no_worker"
    assert "1 worker(s) still starting" in r.json()["message"]
    assert int(r.headers["retry-after"]) >= 1
