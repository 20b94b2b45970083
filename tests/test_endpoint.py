"""End to end: lbproxy serve + real echo worker processes + real HTTP over loopback."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import time

import httpx
import pytest

from .conftest import error_of, pid_alive, until, ws_text_frame


async def test_cold_start_from_zero_serves_the_first_request(start_endpoint, client):
    ep = await start_endpoint(worker={"env": {"ECHO_INIT_DELAY": "0.5"}})
    assert await ep.workers() == []  # active: 0 starts nothing until a request comes
    r = await client.get(ep.url + "/echo/hello?x=1")
    assert r.status_code == 200
    body = r.json()
    assert body["raw_path"] == "/echo/hello?x=1"
    worker_id = r.headers["x-lbproxy-worker-id"]
    assert body["worker"] == worker_id
    [w] = await ep.workers()
    assert w["id"] == worker_id and w["state"] == "ready"
    metrics = (await client.get(ep.admin + "/metrics")).text
    assert 'lbproxy_cold_start_seconds_count{endpoint="test"} 1.0' in metrics


async def test_active_workers_start_at_boot_and_readyz_follows(start_endpoint, client):
    ep = await start_endpoint(workers={"active": 1, "max": 2}, worker={"env": {"ECHO_INIT_DELAY": "0.3"}})
    # Ready at once: requests queue for the starting worker. With ?require_worker=1, only once it is ready.
    r = await client.get(ep.admin + "/readyz")
    assert r.status_code == 200 and r.json()["ready_workers"] == 0
    r = await client.get(ep.admin + "/readyz?require_worker=1")
    assert r.status_code == 503 and r.json()["ready"] is False
    await ep.wait_workers(lambda ws: [w["state"] for w in ws] == ["ready"], "one ready worker at boot")
    assert (await client.get(ep.admin + "/readyz?require_worker=1")).status_code == 200


@pytest.mark.slow
async def test_burst_spreads_over_workers_and_never_exceeds_max(start_endpoint, client):
    ep = await start_endpoint(
        workers={"max": 3, "concurrency": 1},
        scaling={"queue_delay": "0s"},
        worker={"env": {"ECHO_INIT_DELAY": "0.2"}},
    )
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, len(await ep.workers()))
            await asyncio.sleep(0.02)

    watcher = asyncio.create_task(watch())
    rs = await asyncio.gather(*(client.get(ep.url + "/sleep?s=0.3") for _ in range(12)))
    done.set()
    await watcher
    assert [r.status_code for r in rs] == [200] * 12
    used = {r.headers["x-lbproxy-worker-id"] for r in rs}
    assert len(used) > 1, "a burst must spread over several workers"
    assert peak <= 3 and len(await ep.workers()) <= 3
    assert "scale up" in ep.log()


@pytest.mark.slow
async def test_idle_workers_are_drained_and_stopped_down_to_active(start_endpoint, client):
    ep = await start_endpoint(
        workers={"active": 1, "max": 3, "concurrency": 1},
        scaling={"queue_delay": "0s"},
        timeouts={"idle": "1s"},
    )
    await ep.wait_workers(lambda ws: len(ws) == 1 and ws[0]["state"] == "ready", "the active worker")
    rs = await asyncio.gather(*(client.get(ep.url + "/sleep?s=0.5") for _ in range(6)))
    assert all(r.status_code == 200 for r in rs)
    assert len({r.headers["x-lbproxy-worker-id"] for r in rs}) > 1
    pids = {w["pid"] for w in await ep.workers()}
    ws = await ep.wait_workers(lambda ws: len(ws) == 1, "scale-down to workers.active", timeout=20)
    assert ws[0]["state"] == "ready"
    stopped = pids - {ws[0]["pid"]}
    await until(lambda: not any(pid_alive(p) for p in stopped), 10, "stopped workers' processes to exit")
    assert "scale down: draining worker" in ep.log()
    # It stays at workers.active: idle, but never below.
    status = await ep.status()
    assert len(status["workers"]) == 1


async def test_api_key_is_required_for_http_and_websocket(start_endpoint, client):
    import aiohttp

    ep = await start_endpoint(auth={"api_keys": ["s3cret-key"]})
    r = await client.get(ep.url + "/echo")
    assert r.status_code == 401 and error_of(r) == "unauthorized"
    assert r.headers["www-authenticate"] == "Bearer"
    r = await client.get(ep.url + "/echo", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await s.ws_connect(ep.url + "/ws")
        assert exc.value.status == 401
    assert await ep.workers() == [], "an unauthorized request must not start a worker"

    r = await client.get(ep.url + "/echo", headers={"Authorization": "Bearer s3cret-key"})
    assert r.status_code == 200
    assert "authorization" not in {k.lower() for k in r.json()["headers"]}, "lbproxy's key leaked to the worker"
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(ep.url + "/ws", headers={"Authorization": "Bearer s3cret-key"}) as ws:
            await ws.send_str("hi")
            assert (await ws.receive()).data == "hi"
    assert "s3cret-key" not in ep.log()
    assert "s3cret-key" not in (await client.get(ep.admin + "/status")).text


async def test_api_keys_from_the_environment(start_endpoint, client):
    ep = await start_endpoint(env={"LBPROXY_API_KEYS": "k1, k2"})
    assert (await client.get(ep.url + "/echo")).status_code == 401
    r = await client.get(ep.url + "/echo", headers={"Authorization": "Bearer k2"})
    assert r.status_code == 200


async def test_streamed_response_arrives_chunk_by_chunk(start_endpoint, client):
    ep = await start_endpoint()
    await client.get(ep.url + "/echo")  # warm: a worker is ready
    arrivals = []
    started = time.monotonic()
    async with client.stream("GET", ep.url + "/stream?n=4&interval=0.4") as r:
        assert r.status_code == 200
        async for chunk in r.aiter_raw():
            arrivals.append((time.monotonic() - started, chunk))
    total = arrivals[-1][0]
    assert b"".join(c for _, c in arrivals).count(b"chunk-") == 4
    # Unbuffered: the first chunk is with the client long before the worker wrote the last one (1.2 s later).
    assert arrivals[0][0] < total - 0.8, arrivals


async def test_streamed_request_body_reaches_the_worker_whole(start_endpoint, client):
    ep = await start_endpoint()

    async def body():
        for i in range(20):
            yield bytes([i]) * 65536

    r = await client.post(ep.url + "/echo/upload", content=body())
    assert r.status_code == 200
    assert r.json()["body_len"] == 20 * 65536
    import hashlib

    assert r.json()["body_sha256"] == hashlib.sha256(b"".join(bytes([i]) * 65536 for i in range(20))).hexdigest()


async def test_websocket_echo_text_binary_subprotocol_and_close_code(start_endpoint):
    import aiohttp

    ep = await start_endpoint()
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(ep.url + "/ws", protocols=["nope", "superchat"]) as ws:
            assert ws.protocol == "superchat"
            await ws.send_str("hello")
            assert (await ws.receive()).data == "hello"
            await ws.send_bytes(b"\x00\x01\xff")
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.BINARY and msg.data == b"\x00\x01\xff"
            await ws.send_str("close:4001")
            msg = await ws.receive()
            assert msg.type is aiohttp.WSMsgType.CLOSE and msg.data == 4001
        # The client closing with its own code reaches the worker, and the slot is freed.
        async with s.ws_connect(ep.url + "/ws") as ws:
            [w] = await ep.workers()
            assert w["in_flight"] == 1, "an open WebSocket holds its worker slot"
            await ws.close(code=4002)
    await ep.wait_workers(lambda ws: ws[0]["in_flight"] == 0, "the WebSocket slot to be released")


@pytest.mark.slow
async def test_execution_timeout_answers_504(start_endpoint, client):
    ep = await start_endpoint(timeouts={"execution": "5s"})
    started = time.monotonic()
    r = await client.get(ep.url + "/sleep?s=60")
    assert r.status_code == 504 and error_of(r) == "execution_timeout"
    assert 4.5 < time.monotonic() - started < 15
    await ep.wait_workers(lambda ws: ws[0]["in_flight"] == 0, "the timed-out request's slot to be freed")


async def test_body_over_the_limit_gets_413_and_never_reaches_a_worker(start_endpoint, client):
    ep = await start_endpoint(limits={"max_body_size": "1KB"})
    r = await client.post(ep.url + "/echo", content=b"x" * 2000)
    assert r.status_code == 413 and error_of(r) == "body_too_large"
    assert await ep.workers() == []

    async def chunked():
        for _ in range(4):
            yield b"y" * 600

    r = await client.post(ep.url + "/echo", content=chunked())
    assert r.status_code == 413 and error_of(r) == "body_too_large"
    r = await client.post(ep.url + "/echo", content=b"z" * 1000)
    assert r.status_code == 200 and r.json()["body_len"] == 1000


async def test_no_worker_within_wait_gets_503_with_retry_after(start_endpoint, client):
    ep = await start_endpoint(timeouts={"wait": "0.5s"}, worker={"env": {"ECHO_NEVER_READY": "1"}})
    r = await client.get(ep.url + "/echo")
    assert r.status_code == 503 and error_of(r) == "no_worker"
    assert int(r.headers["retry-after"]) > 0
    [w] = await ep.workers()
    assert w["state"] == "starting"


async def test_full_queue_gets_429(start_endpoint, client):
    ep = await start_endpoint(limits={"max_queue": 1}, timeouts={"wait": "3s"},
                              worker={"env": {"ECHO_NEVER_READY": "1"}})
    first = asyncio.create_task(client.get(ep.url + "/echo"))
    await until(lambda: ep.status(), 5)
    await until(lambda: _queue_length(ep), 5, "one queued request")
    r = await client.get(ep.url + "/echo")
    assert r.status_code == 429 and error_of(r) == "queue_full"
    assert (await first).status_code == 503


async def _queue_length(ep) -> int:
    return int((await ep.status())["queue"]["length"])


async def test_worker_killed_mid_request_gives_502_and_the_endpoint_recovers(start_endpoint, client):
    ep = await start_endpoint(workers={"active": 1, "max": 2})
    await ep.wait_workers(lambda ws: len(ws) == 1 and ws[0]["state"] == "ready", "the active worker")
    [w] = await ep.workers()
    # A request first, so the next one travels on a pooled keep-alive connection: a POST dropped with it is not
    # sent again, to any worker (the worker may have acted on it).
    assert (await client.get(ep.url + "/echo")).status_code == 200
    slow = asyncio.create_task(client.post(ep.url + "/sleep?s=30"))

    async def reached_worker() -> bool:  # lbproxy's count rises before the bytes reach the worker
        return (await client.get(f"http://{w['address']}/stats")).json()["inflight"] == 1

    await until(reached_worker, 10, "the request to reach the worker")
    os.kill(w["pid"], signal.SIGKILL)
    r = await slow
    assert r.status_code == 502 and error_of(r) == "worker_failed"
    assert r.headers["x-lbproxy-worker-id"] == w["id"]
    # A replacement starts (below workers.active) and serves the next request once the exit is noticed
    # (a request sent into the dying worker's accept queue meanwhile would rightly get 502 too).
    await ep.wait_workers(lambda ws: all(x["id"] != w["id"] for x in ws), "lbproxy to notice the exit")
    r = await client.get(ep.url + "/echo")
    assert r.status_code == 200 and r.headers["x-lbproxy-worker-id"] != w["id"]
    assert "exited unexpectedly" in ep.log()


async def test_worker_crash_during_request_gives_502(start_endpoint, client):
    ep = await start_endpoint()
    r = await client.post(ep.url + "/exit?code=1")
    assert r.status_code == 502 and error_of(r) == "worker_failed"
    crashed = r.headers.get("x-lbproxy-worker-id")
    await ep.wait_workers(lambda ws: all(w["id"] != crashed for w in ws), "lbproxy to notice the exit")
    r = await client.get(ep.url + "/echo")
    assert r.status_code == 200 and r.headers["x-lbproxy-worker-id"] != crashed


@pytest.mark.slow
async def test_worker_that_never_turns_ready_is_replaced_after_init_timeout(start_endpoint, client, tmp_path):
    ping = tmp_path / "ping-status"
    ping.write_text("204")  # every worker initializes forever until the file goes
    ep = await start_endpoint(timeouts={"init": "1s", "wait": "20s"},
                              worker={"env": {"ECHO_PING_STATUS_FILE": str(ping)}})
    pending = asyncio.create_task(client.get(ep.url + "/echo"))
    [first] = await ep.wait_workers(lambda ws: len(ws) == 1, "the first worker")
    await ep.wait_workers(lambda ws: first["id"] not in {w["id"] for w in ws} and len(ws) == 1,
                          "the never-ready worker to be replaced", timeout=15)
    await until(lambda: not pid_alive(first["pid"]), 10, "the replaced worker's process to exit")
    assert "not ready within timeouts.init" in ep.log()
    ping.unlink()
    r = await pending
    assert r.status_code == 200 and r.headers["x-lbproxy-worker-id"] != first["id"]


async def test_hop_by_hop_headers_are_stripped_and_forwarded_headers_set(start_endpoint, client):
    ep = await start_endpoint()
    r = await client.get(
        ep.url + "/echo",
        headers={"Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "1", "Keep-Alive": "timeout=5",
                 "TE": "trailers", "X-Request-Id": "req-123", "X-Forwarded-For": "10.1.2.3",
                 "Proxy-Authorization": "Basic Zm9vOmJhcg=="},
    )
    seen = {k.lower(): v for k, v in r.json()["headers"].items()}
    for hop in ("x-secret-hop", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert hop not in seen, hop
    assert seen["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == ep.url.removeprefix("http://")
    assert seen["x-request-id"] == "req-123"
    assert r.headers["x-request-id"] == "req-123"
    assert "user-agent" in seen  # the client's own headers pass through
    # A new request id is made when the client sent none, and both sides see the same one.
    r = await client.get(ep.url + "/echo")
    assert len(r.headers["x-request-id"]) == 32 and r.json()["headers"]["X-Request-Id"] == r.headers["x-request-id"]
    # Response side: the worker's hop-by-hop headers do not reach the client.
    r = await client.get(ep.url + "/headers?set=Connection:X-Drop-Me&set=X-Drop-Me:1&set=Keep-Alive:timeout=9"
                         "&set=X-Custom:kept")
    assert r.headers["x-custom"] == "kept"
    assert "x-drop-me" not in r.headers and "keep-alive" not in r.headers


async def test_path_and_query_reach_the_worker_byte_for_byte(start_endpoint):
    ep = await start_endpoint()
    host, port = ep.config["listen"].split(":")
    for target in ("/echo/a%2Fb/../c?x=1&x=2&y=%20", "/echo//double//slash", "/echo/%E2%9C%93?q=%zz&&",
                   "/echo/caf%C3%A9;p=1?a=b#frag"):
        sent = target.split("#")[0]
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(f"GET {sent} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await reader.read()
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), raw[:200]
        import json

        assert json.loads(body.split(b"\r\n", 1)[1] if b"chunked" in head.lower() else body)["raw_path"] == sent


async def test_absolute_form_target_cannot_choose_the_upstream(start_endpoint):
    ep = await start_endpoint()
    host, port = ep.config["listen"].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET http://169.254.169.254/latest HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await writer.drain()
    raw = await reader.read()
    writer.close()
    assert raw.startswith(b"HTTP/1.1 400"), raw[:200]
    assert await ep.workers() == []


async def test_soft_affinity_prefers_the_named_worker(start_endpoint, client):
    ep = await start_endpoint(workers={"active": 2, "max": 2})
    ws = await ep.wait_workers(lambda ws: len(ws) == 2 and all(w["state"] == "ready" for w in ws), "2 ready")
    for w in ws:
        for _ in range(3):
            r = await client.get(ep.url + "/echo", headers={"X-Lbproxy-Worker-Id": w["id"]})
            assert r.headers["x-lbproxy-worker-id"] == w["id"]
    r = await client.get(ep.url + "/echo", headers={"X-Lbproxy-Worker-Id": "gone-worker"})
    assert r.status_code == 200  # soft: an unknown id falls back to any worker


async def test_strict_affinity_waits_for_the_named_worker_or_fails_when_it_is_gone(start_endpoint, client):
    ep = await start_endpoint(workers={"active": 2, "max": 2, "concurrency": 1})
    ws = await ep.wait_workers(lambda ws: len(ws) == 2 and all(w["state"] == "ready" for w in ws), "2 ready")
    target = ws[0]["id"]
    strict = {"X-Lbproxy-Worker-Id": f"strict {target}"}
    busy = asyncio.create_task(client.get(ep.url + "/sleep?s=1", headers=strict))
    await ep.wait_workers(lambda ws: any(w["id"] == target and w["in_flight"] == 1 for w in ws), "target busy")
    # The other worker is free, yet the strict request waits for its own.
    r = await client.get(ep.url + "/echo", headers=strict)
    assert r.status_code == 200 and r.headers["x-lbproxy-worker-id"] == target
    assert (await busy).headers["x-lbproxy-worker-id"] == target
    r = await client.get(ep.url + "/echo", headers={"X-Lbproxy-Worker-Id": "strict gone-worker"})
    assert r.status_code == 404 and error_of(r) == "worker_gone"
    assert "gone-worker" in r.json()["message"]


async def test_websocket_client_vanishing_mid_session_frees_the_slot_and_ends_the_worker_session(
        start_endpoint, client):
    ep = await start_endpoint(workers={"active": 1, "max": 1, "concurrency": 1})
    [w] = await ep.wait_workers(lambda ws: len(ws) == 1 and ws[0]["state"] == "ready", "the worker")
    host, port = ep.config["listen"].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                 + ws_text_frame("hello"))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert await asyncio.wait_for(reader.readexactly(7), 10) == b"\x81\x05hello"

    async def worker_sessions() -> int:
        return int((await client.get(f"http://{w['address']}/stats")).json()["inflight"])

    assert await worker_sessions() == 1
    # The client vanishes: no close frame, no FIN, a RST (a phone losing its network looks alike to lbproxy).
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    await ep.wait_workers(lambda ws: ws[0]["in_flight"] == 0, "lbproxy to free the WebSocket's slot")
    await until(lambda: _no_sessions(worker_sessions), 10, "the worker's side of the session to end")
    r = await client.get(ep.url + "/echo")  # concurrency 1: the slot is really free
    assert r.status_code == 200


async def _no_sessions(sessions) -> bool:
    return await sessions() == 0


async def test_status_and_metrics_describe_the_endpoint(start_endpoint, client):
    ep = await start_endpoint(auth={"api_keys": ["k-status"]}, worker={"env": {"SECRET_TOKEN": "hunter2"}})
    await client.get(ep.url + "/echo", headers={"Authorization": "Bearer k-status"})
    status = await ep.status()
    assert status["endpoint"] == "test" and status["queue"]["length"] == 0
    [w] = status["workers"]
    assert {"id", "state", "in_flight", "idle_seconds", "pid"} <= set(w)
    assert status["last_decisions"] and status["last_decisions"][0]["start"] == 1
    text = (await client.get(ep.admin + "/status")).text + (await client.get(ep.admin + "/")).text
    assert "k-status" not in text and "hunter2" not in text
    metrics = (await client.get(ep.admin + "/metrics")).text
    for name in ("lbproxy_requests_total", "lbproxy_request_duration_seconds_bucket", "lbproxy_queue_length",
                 "lbproxy_queue_wait_seconds", "lbproxy_workers", "lbproxy_cold_start_seconds",
                 "lbproxy_scale_events_total"):
        assert name in metrics, name
    assert 'lbproxy_requests_total{code="200",endpoint="test"} 1.0' in metrics
    assert 'lbproxy_workers{endpoint="test",state="ready"} 1.0' in metrics
    assert 'lbproxy_leader{endpoint="test"} 1.0' in metrics  # a single local proxy always scales


async def test_sigterm_finishes_in_flight_requests_and_stops_every_worker(start_endpoint, client):
    ep = await start_endpoint(workers={"active": 2, "max": 2})
    ws = await ep.wait_workers(lambda ws: len(ws) == 2 and all(w["state"] == "ready" for w in ws), "2 ready")
    slow = asyncio.create_task(client.get(ep.url + "/sleep?s=1"))
    await ep.wait_workers(lambda ws: sum(w["in_flight"] for w in ws) == 1, "the request in flight")
    ep.proc.send_signal(signal.SIGTERM)
    r = await slow
    assert r.status_code == 200 and r.json()["slept"] == 1
    assert await asyncio.to_thread(ep.proc.wait, 20) == 0
    for w in ws:
        assert not pid_alive(w["pid"]), f"worker {w['id']} outlived lbproxy"
    with pytest.raises(httpx.TransportError):
        await client.get(ep.url + "/echo")


async def test_worker_output_goes_to_the_log_with_its_id(start_endpoint, client):
    ep = await start_endpoint()
    r = await client.get(ep.url + "/echo")
    wid = r.headers["x-lbproxy-worker-id"]
    await until(lambda: f"{wid} | echo worker {wid} listening" in ep.log(), 5, "the worker's line in the log")


async def test_separate_health_port(start_endpoint, client):
    ep = await start_endpoint(worker={"port": 8000, "health_port": 8001})
    r = await client.get(ep.url + "/echo")
    assert r.status_code == 200
    # /ping is served on the health port only: through the app port the worker says 404.
    assert (await client.get(ep.url + "/ping")).status_code == 404
