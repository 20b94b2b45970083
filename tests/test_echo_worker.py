"""The example echo worker (examples/workers/echo.py) honours the worker contract.

Every test runs the worker as a real subprocess on free loopback ports and synchronises by polling with a
deadline, never by fixed sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import pytest

from .conftest import free_port

ECHO_PY = Path(__file__).resolve().parent.parent / "examples" / "workers" / "echo.py"
DEADLINE = 10.0  # seconds any single wait may take before the test fails


@dataclass
class Worker:
    proc: subprocess.Popen[str]
    port: int
    health_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}"

    def ping(self) -> int | None:
        """The /ping status, or None while nothing answers."""
        if self.proc.poll() is not None:
            pytest.fail(f"worker exited with {self.proc.returncode}: {self.proc.stderr.read()}")  # type: ignore[union-attr]
        try:
            return httpx.get(f"{self.health_url}/ping", timeout=1.0).status_code
        except httpx.TransportError:
            return None

    def wait_ping(self, wanted: Callable[[int | None], bool]) -> int | None:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            status = self.ping()
            if wanted(status):
                return status
            time.sleep(0.02)
        pytest.fail(f"/ping never matched within {DEADLINE} s")

    def wait_ready(self) -> None:
        self.wait_ping(lambda status: status == 200)


Spawn = Callable[..., Worker]


def _spawn(env: dict[str, str], separate_health: bool) -> Worker:
    port = free_port()
    health_port = free_port() if separate_health else port
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("ECHO_", "LBPROXY_", "PORT"))}
    full_env.update(PORT=str(port), PORT_HEALTH=str(health_port), **env)
    proc = subprocess.Popen(
        [sys.executable, str(ECHO_PY)],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return Worker(proc, port, health_port)


def _stop(worker: Worker) -> None:
    if worker.proc.poll() is None:
        worker.proc.kill()
    worker.proc.wait(timeout=DEADLINE)
    for pipe in (worker.proc.stdout, worker.proc.stderr):
        if pipe is not None:
            pipe.close()


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start echo workers; every one is killed at teardown."""
    workers: list[Worker] = []

    def start(separate_health: bool = False, **env: str) -> Worker:
        workers.append(_spawn(env, separate_health))
        return workers[-1]

    yield start
    for worker in workers:
        _stop(worker)


@pytest.fixture(scope="module")
def ping_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("echo") / "ping-status"


@pytest.fixture(scope="module")
def worker(ping_file: Path) -> Iterator[Worker]:
    """One ready worker shared by the tests that only send requests."""
    w = _spawn({"LBPROXY_WORKER_ID": "echo-test-1", "ECHO_PING_STATUS_FILE": str(ping_file)}, False)
    try:
        w.wait_ready()
        yield w
    finally:
        _stop(w)


def raw_request(port: int, head: bytes) -> tuple[bytes, bytes]:
    """Send bytes exactly as given on a fresh connection; returns (status line and headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    header, _, body = data.partition(b"\r\n\r\n")
    return header, body


# --- lifecycle -------------------------------------------------------------------------------------------


def test_ping_is_204_while_initialising_then_200(spawn: Spawn) -> None:
    w = spawn(ECHO_INIT_DELAY="1.5", LBPROXY_WORKER_ID="w-init")
    assert w.wait_ping(lambda status: status is not None) == 204
    w.wait_ready()
    assert w.proc.stdout is not None
    assert w.proc.stdout.readline().strip() == f"echo worker w-init listening on {w.port} (health {w.port})"


def test_separate_health_port_alone_serves_ping(spawn: Spawn) -> None:
    w = spawn(separate_health=True)
    w.wait_ready()
    assert httpx.get(f"{w.url}/ping").status_code == 404
    assert httpx.get(f"{w.health_url}/echo").status_code == 404
    assert httpx.get(f"{w.url}/echo").status_code == 200


def test_never_ready_worker_keeps_answering_204(spawn: Spawn) -> None:
    w = spawn(ECHO_NEVER_READY="1")
    assert w.wait_ping(lambda status: status is not None) == 204
    assert httpx.get(f"{w.url}/pid").status_code == 200  # serving, yet still not ready
    assert [w.ping() for _ in range(3)] == [204, 204, 204]


def test_crash_at_start_exits_3(spawn: Spawn) -> None:
    w = spawn(ECHO_CRASH_AT_START="1")
    assert w.proc.wait(timeout=DEADLINE) == 3
    assert w.proc.stderr is not None and "ECHO_CRASH_AT_START" in w.proc.stderr.read()


def test_ping_status_file_overrides_health(worker: Worker, ping_file: Path) -> None:
    try:
        ping_file.write_text("500")
        assert worker.ping() == 500
        ping_file.write_text("")  # unparsable content is ignored
        assert worker.ping() == 200
    finally:
        ping_file.unlink(missing_ok=True)
    assert worker.ping() == 200


def test_sigterm_lets_the_request_in_flight_finish_and_exits_0(spawn: Spawn) -> None:
    w = spawn()
    w.wait_ready()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(httpx.get, f"{w.url}/sleep?s=0.5", timeout=DEADLINE)
        deadline = time.monotonic() + DEADLINE
        while httpx.get(f"{w.url}/stats").json()["inflight"] != 1:
            assert time.monotonic() < deadline, "the /sleep request never reached the worker"
            time.sleep(0.01)
        w.proc.send_signal(signal.SIGTERM)
        response = pending.result(timeout=DEADLINE)
    assert response.status_code == 200
    assert response.json()["slept"] == 0.5
    assert w.proc.wait(timeout=DEADLINE) == 0


# --- requests ---------------------------------------------------------------------------------------------


def test_every_response_names_the_worker(worker: Worker) -> None:
    for path in ("/ping", "/echo", "/status/404", "/no-such-route"):
        assert httpx.get(f"{worker.url}{path}").headers["X-Echo-Worker"] == "echo-test-1"


def test_echo_reports_the_request_target_byte_for_byte(worker: Worker) -> None:
    target = b"/echo/a%2Fb/../c?x=1&x=2&y=%20"
    head, body = raw_request(
        worker.port,
        b"PUT " + target + b" HTTP/1.1\r\nHost: h\r\nX-Dup: a\r\nX-MiXeD-Case: v\r\nx-dup: b\r\n"
        b"Content-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    assert head.startswith(b"HTTP/1.1 200")
    echoed = json.loads(body)
    assert echoed["raw_path"] == target.decode()
    assert echoed["method"] == "PUT"
    assert echoed["path"].startswith("/echo/")
    assert echoed["query"] == {"x": ["1", "2"], "y": " "}
    assert echoed["headers"]["X-Dup"] == "a, b"
    assert echoed["headers"]["X-MiXeD-Case"] == "v"
    assert echoed["body_len"] == 5
    assert echoed["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert echoed["worker"] == "echo-test-1"


def test_echo_hashes_a_large_body(worker: Worker) -> None:
    body = os.urandom(3 * 1024 * 1024 + 7)
    echoed = httpx.post(f"{worker.url}/echo/upload", content=body, timeout=DEADLINE).json()
    assert echoed["body_len"] == len(body)
    assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()


def test_stream_chunks_arrive_one_by_one(worker: Worker) -> None:
    # 5 chunks 0.3 s apart: the first must arrive long (>= 0.6 s of the 1.2 s) before the response ends.
    received = b""
    first_at: float | None = None
    with httpx.stream("GET", f"{worker.url}/stream?n=5&interval=0.3&size=24", timeout=DEADLINE) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.headers["Transfer-Encoding"] == "chunked"
        for data in response.iter_raw():
            first_at = first_at or time.monotonic()
            received += data
    assert first_at is not None and time.monotonic() - first_at >= 0.6
    assert received == b"".join(f"chunk-{i}".ljust(23, ".").encode() + b"\n" for i in range(5))


def test_sse_emits_events(worker: Worker) -> None:
    response = httpx.get(f"{worker.url}/sse?n=3&interval=0")
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"


def test_bytes_returns_n_bytes_with_content_length(worker: Worker) -> None:
    response = httpx.get(f"{worker.url}/bytes?n=200007")
    assert response.headers["Content-Length"] == "200007"
    assert response.content == b"x" * 200007


@pytest.mark.parametrize("code", [200, 204, 304, 418, 503])
def test_status_returns_the_code(worker: Worker, code: int) -> None:
    response = httpx.get(f"{worker.url}/status/{code}")
    assert response.status_code == code
    assert response.content == (b"" if code in (204, 304) else json.dumps({"status": code}).encode())


def test_headers_sets_response_headers(worker: Worker) -> None:
    query = "set=Connection:close-me&set=Keep-Alive:timeout=5&set=X-Custom:1"
    response = httpx.get(f"{worker.url}/headers?{query}")
    assert response.headers["Connection"] == "close-me"
    assert response.headers["Keep-Alive"] == "timeout=5"
    assert response.headers["X-Custom"] == "1"


# --- WebSocket --------------------------------------------------------------------------------------------


async def test_websocket_echoes_and_negotiates_a_subprotocol(worker: Worker) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{worker.url}/ws", protocols=("nope", "superchat")) as ws,
    ):
        assert ws.protocol == "superchat"
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=DEADLINE) == "hello"
        await ws.send_bytes(b"\x00\xffbin")
        assert await ws.receive_bytes(timeout=DEADLINE) == b"\x00\xffbin"
        await ws.send_str("whoami")
        assert await ws.receive_str(timeout=DEADLINE) == "echo-test-1"
        await ws.send_str("protocol")
        assert await ws.receive_str(timeout=DEADLINE) == "superchat"


async def test_websocket_close_command_closes_with_that_code(worker: Worker) -> None:
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{worker.url}/ws") as ws:
        assert ws.protocol is None
        await ws.send_str("close:4001")
        msg = await ws.receive(timeout=DEADLINE)
        assert msg.type == aiohttp.WSMsgType.CLOSE
        assert msg.data == 4001
        assert ws.close_code == 4001


async def test_sigterm_closes_open_websockets_with_1001(spawn: Spawn) -> None:
    w = spawn()
    await asyncio.to_thread(w.wait_ready)
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{w.url}/ws") as ws:
        w.proc.send_signal(signal.SIGTERM)
        msg = await ws.receive(timeout=DEADLINE)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1001)
    assert await asyncio.to_thread(w.proc.wait, DEADLINE) == 0
