"""The system under test: ``lbproxy serve`` with one local worker, and the workers the scenarios use.

Every column of a scenario hits literally the same worker process: lbproxy starts it (``worker.command``),
the bench reads its address from lbproxy's admin ``/status`` (``workers[0].address``), sends the "direct"
load there and points the peers (``peers.py``) at it.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from procs import LOOPBACK, Processes, free_port, group_pids, http_get, wait_http, wait_port

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ECHO_WORKER = ROOT / "examples" / "workers" / "echo.py"
NGINX_WORKER = HERE / "nginx_worker.sh"
COLD_WORKER = HERE / "cold_worker.py"
WS_ECHO_WORKER = HERE / "ws_echo_worker.py"
LBPROXY = Path(sys.executable).with_name("lbproxy")


@dataclass(frozen=True)
class WorkerKind:
    """How to start the reference worker, and where it serves each scenario's response."""

    name: str
    command: tuple[str, ...]
    env: dict[str, str]
    paths: dict[str, str]


def nginx_worker(tmp: Path) -> WorkerKind:
    return WorkerKind(
        name="nginx (bench/nginx_worker.sh)",
        command=("bash", str(NGINX_WORKER)),
        env={"BENCH_TMP": str(tmp)},
        paths={"small": "/small", "64k": "/64k", "1m": "/1m"},
    )


def echo_worker() -> WorkerKind:
    return WorkerKind(
        name="python aiohttp (examples/workers/echo.py)",
        command=("python3", str(ECHO_WORKER)),
        env={"ECHO_INIT_DELAY": "0", "ECHO_SHUTDOWN_TIMEOUT": "1"},
        paths={"small": "/bytes?n=13", "64k": "/bytes?n=65536", "1m": "/bytes?n=1048576", "ws": "/ws"},
    )


def ws_echo_worker() -> WorkerKind:
    """picows echo (bench/ws_echo_worker.py), run by this interpreter: picows is installed beside the bench."""
    return WorkerKind(
        name="python picows (bench/ws_echo_worker.py)",
        command=(sys.executable, str(WS_ECHO_WORKER)),
        env={},
        paths={"ws": "/ws"},
    )


def cold_worker(ready_file: Path, delay: float) -> WorkerKind:
    return WorkerKind(
        name="python aiohttp (bench/cold_worker.py)",
        command=("python3", str(COLD_WORKER)),
        env={"COLD_READY_FILE": str(ready_file), "COLD_READY_DELAY": f"{delay:g}"},
        paths={"small": "/small"},
    )


@dataclass
class Lbproxy:
    """A running ``lbproxy serve`` and its (first) worker."""

    proc: Any
    port: int
    admin_port: int
    log_path: Path
    worker_port: int = 0
    worker_pid: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def status(self) -> dict[str, Any]:
        code, body = http_get(f"http://{LOOPBACK}:{self.admin_port}/status")
        if code != 200:
            raise RuntimeError(f"lbproxy /status answered {code}")
        result: dict[str, Any] = json.loads(body)
        return result

    def wait_worker_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            workers = self.status()["workers"]
            ready = [w for w in workers if w["state"] == "ready"]
            if ready:
                self.worker_port = int(ready[0]["address"].rsplit(":", 1)[1])
                self.worker_pid = int(ready[0].get("pid") or 0)
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"lbproxy exited with code {self.proc.returncode}; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"lbproxy's worker was not ready within {timeout:g}s: {workers}; "
                                   f"see {self.log_path}")
            time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        """The worker's processes (its process group: nginx's master and worker, or the Python process)."""
        return group_pids(self.worker_pid) if self.worker_pid else []


def start_lbproxy(
    procs: Processes, tmp: Path, name: str, worker: WorkerKind, *, active: int = 1, wait_ready: bool = True,
    access_log: bool = False,
) -> Lbproxy:
    """``lbproxy serve`` on free loopback ports with one local worker (``workers.max: 1``), pinned."""
    port, admin_port = free_port(), free_port()
    config = {
        "name": "bench",
        "listen": f"{LOOPBACK}:{port}",
        "admin": f"{LOOPBACK}:{admin_port}",
        "workers": {"active": active, "max": 1, "concurrency": 0, "gpus": 0},
        # Long enough that nothing times out or scales down during a scenario.
        "timeouts": {"idle": "1h", "execution": "1h", "wait": "60s", "init": "60s", "shutdown": "2s"},
        "worker": {"command": list(worker.command), "env": worker.env, "stop_grace": "3s"},
    }
    if access_log:  # a line per request into lbproxy's log file (bench --access-log: what the log costs)
        config["log"] = {"access": True}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    proc = procs.start([str(LBPROXY), "serve", str(path)], name=name, cpu=procs.server_cpu)
    lb = Lbproxy(proc, port, admin_port, procs.log_dir / f"{name}.log")
    try:
        wait_http(f"http://{LOOPBACK}:{admin_port}/healthz", 30.0, proc)
        wait_port(port, 10.0, proc)
        if wait_ready and active:
            lb.wait_worker_ready()
            procs.seen.add(lb.worker_pid)
    except BaseException:
        procs.stop(proc)
        raise
    return lb
