"""Fixtures that run the real thing: ``lbproxy serve`` as a process, echo workers as processes, loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .queue.pg_server import PgServer

ROOT = Path(__file__).resolve().parent.parent
ECHO = ROOT / "examples" / "workers" / "echo.py"


LEFTOVER_TURNS = 20  # loop turns a test's tasks get to finish a cancellation already under way


@pytest.fixture(autouse=True)
def _no_pending_tasks(request: pytest.FixtureRequest) -> None:
    """Fail an async test that leaves asyncio tasks pending once it and its fixtures are done (as kopf does).

    A task left running is a leak (of a loop, a socket, a process) or a test that did not clean up; the
    event loop's closing would otherwise cancel it silently. Requested first, so checked last.
    """
    if inspect.iscoroutinefunction(request.function):
        request.getfixturevalue("_tasks_left_check")


@pytest.fixture
async def _tasks_left_check() -> AsyncIterator[None]:
    yield
    this = asyncio.current_task()
    for _ in range(LEFTOVER_TURNS):
        left = [t for t in asyncio.all_tasks() if t is not this and not t.done()]
        if not left:
            return
        await asyncio.sleep(0)
    message = f"the test left {len(left)} asyncio task(s) pending:\n" + "\n".join(f"  {t!r}" for t in left)
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)
    pytest.fail(message, pytrace=False)


def _port_block() -> range:
    """This test process's own ports: below the kernel's ephemeral range, one block per xdist worker.

    A port from ``bind(0)`` is ephemeral: any outgoing connection, or another test process, can take it
    between our probe and the server's bind. Ports below the ephemeral range are never handed out by the
    kernel, and each pytest-xdist worker (``PYTEST_XDIST_WORKER=gwN``) counts through its own block.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    index = int(worker) if worker.isdigit() else 0
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    start = max(1024, low - 12000)
    size = (low - start) // max(count, 1)
    return range(start + index * size, start + (index + 1) * size)


_PORTS = _port_block()
_next_port = [int(time.time()) % len(_PORTS)]  # a new start per run: a port a dead run left in TIME_WAIT is skipped


def free_port() -> int:
    """A loopback port no other test (or xdist worker) is given, free at the time of the call."""
    for _ in range(len(_PORTS)):
        port = _PORTS[_next_port[0] % len(_PORTS)]
        _next_port[0] += 1
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port in {_PORTS}")


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent has not reaped it yet).
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            return False
    return True


async def until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition",
                interval: float = 0.02) -> Any:
    """Poll ``predicate`` (sync or async) until it returns a truthy value; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


@dataclass
class Endpoint:
    """A running ``lbproxy serve`` process and how to reach it."""

    proc: subprocess.Popen[bytes]
    url: str
    admin: str
    config: dict[str, Any]
    log_path: Path
    seen_pids: set[int] = field(default_factory=set)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def status(self) -> dict[str, Any]:
        async with httpx.AsyncClient() as c:
            r = await c.get(self.admin + "/status")
            data: dict[str, Any] = r.json()
        self.seen_pids.update(w["pid"] for w in data["workers"] if "pid" in w)
        return data

    async def workers(self, *states: str) -> list[dict[str, Any]]:
        ws = (await self.status())["workers"]
        return [w for w in ws if not states or w["state"] in states]

    async def wait_workers(self, predicate: Callable[[list[dict[str, Any]]], bool], what: str,
                           timeout: float = 20.0) -> list[dict[str, Any]]:
        async def check() -> tuple[list[dict[str, Any]]] | None:
            ws = await self.workers()
            return (ws,) if predicate(ws) else None  # a tuple: an empty worker list is a valid answer
        result: tuple[list[dict[str, Any]]] = await until(check, timeout, what, interval=0.05)
        return result[0]

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
            raise AssertionError(f"lbproxy did not exit within {timeout}s of SIGTERM\n{self.log()[-3000:]}") from None


def base_config(**overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "test",
        "listen": f"127.0.0.1:{free_port()}",
        "admin": f"127.0.0.1:{free_port()}",
        "workers": {"active": 0, "max": 2, "concurrency": 0},
        "timeouts": {"idle": "30s", "execution": "60s", "wait": "20s", "init": "30s", "shutdown": "10s"},
        "worker": {"command": [sys.executable, str(ECHO)], "env": {}, "stop_grace": "5s"},
    }
    return deep_merge(cfg, overrides)


async def launch(cfg: dict[str, Any], directory: Path, env: dict[str, str] | None = None,
                 open_files: int | None = None) -> Endpoint:
    """Write ``cfg``, start ``lbproxy serve`` on it, and wait until its admin port answers /healthz.

    ``open_files``: lbproxy's hard limit on open files (RLIMIT_NOFILE), to run it out of descriptors.
    """
    n = len(list(directory.glob("lbproxy-*.yaml")))
    path = directory / f"lbproxy-{n}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    log_path = directory / f"lbproxy-{n}.log"
    proc_env = {k: v for k, v in os.environ.items() if not k.startswith(("ECHO_", "LBPROXY_", "KUBERNETES_"))}
    proc_env["LBPROXY_DATA_DIR"] = str(directory / "data")  # state files (queue, cost, workers) stay in the test
    proc_env.update(env or {})
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lbproxy", "serve", str(path), "--log-level", "debug"],
            stdout=log_file, stderr=subprocess.STDOUT, env=proc_env, cwd=ROOT, start_new_session=True,
            preexec_fn=None if open_files is None else lambda: resource.setrlimit(
                resource.RLIMIT_NOFILE, (open_files, open_files)),
        )
    ep = Endpoint(proc, f"http://{cfg['listen']}", f"http://{cfg['admin']}", cfg, log_path)

    async def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"lbproxy exited with {proc.returncode}:\n{ep.log()}")
        try:
            async with httpx.AsyncClient() as c:
                return (await c.get(ep.admin + "/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    try:
        await until(up, 20, "lbproxy admin /healthz")
    except BaseException:
        ep.terminate()
        raise
    return ep


@pytest.fixture(autouse=True, scope="session")
def _data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """lbproxy's own files (worker records, queues, cost) never go to the real home directory in tests."""
    previous = os.environ.get("LBPROXY_DATA_DIR")
    os.environ["LBPROXY_DATA_DIR"] = str(tmp_path_factory.mktemp("lbproxy-data"))
    yield
    if previous is None:
        os.environ.pop("LBPROXY_DATA_DIR", None)
    else:
        os.environ["LBPROXY_DATA_DIR"] = previous


@pytest.fixture
def start_endpoint(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """``await start_endpoint(workers={"max": 3}, ...)`` starts lbproxy with the echo worker; always cleaned up.

    At teardown lbproxy gets SIGTERM and must exit, and every worker process it ever reported must be gone.
    """
    started: list[Endpoint] = []

    async def start(env: dict[str, str] | None = None, open_files: int | None = None, **overrides: Any) -> Endpoint:
        ep = await launch(base_config(**overrides), tmp_path, env, open_files)
        started.append(ep)
        return ep

    yield start

    for ep in started:
        code = ep.terminate()
        assert code == 0, f"lbproxy exited with {code}\n{ep.log()[-3000:]}"
        left = [pid for pid in ep.seen_pids if pid_alive(pid)]
        assert not left, f"worker processes left behind: {left}"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as c:
        yield c


def ws_text_frame(text: str) -> bytes:
    """A masked client text frame (RFC 6455 5.2), payload under 126 bytes."""
    payload, mask = text.encode(), b"\x01\x02\x03\x04"
    return bytes([0x81, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def error_of(response: httpx.Response) -> str:
    """The stable error code of one of lbproxy's own JSON errors."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body = json.loads(response.content)
    assert set(body) == {"error", "message"}, body
    assert body["message"], body
    code: str = body["error"]
    return code


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL server for the whole session (queue and kubernetes tests share it: initdb and a start
    take seconds); each test gets a database of its own (``pg_url``)."""
    server = PgServer(free_port())
    try:
        server.init()
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(pg_server: PgServer) -> str:
    """A fresh, empty database of the session's server for one test: tests never see each other's jobs."""
    return pg_server.new_database()

