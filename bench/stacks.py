"""The systems under test: ``lbproxy serve`` with one local worker, and nginx as the reference proxy.

All three rows of a scenario hit literally the same worker process: lbproxy starts it (``worker.command``),
the bench reads its address from lbproxy's admin ``/status`` (``workers[0].address``) and sends the "direct"
load there and points nginx's ``upstream`` at it.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
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
LBPROXY = Path(sys.executable).with_name("lbproxy")


def nginx_path() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx") if Path(p).exists()),
        None,
    )


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
    procs: Processes, tmp: Path, name: str, worker: WorkerKind, *, active: int = 1, wait_ready: bool = True
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


NGINX_PROXY_CONF = """\
{user}
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {dir}/nginx.pid;
error_log stderr warn;
events {{ worker_connections {connections}; multi_accept on; }}
http {{
  access_log off;
  tcp_nodelay on;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  client_body_temp_path {dir}/tmp/body;
  proxy_temp_path {dir}/tmp/proxy;
  fastcgi_temp_path {dir}/tmp/fastcgi;
  uwsgi_temp_path {dir}/tmp/uwsgi;
  scgi_temp_path {dir}/tmp/scgi;
  upstream worker {{
    server {upstream};
    keepalive 64;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen {listen} backlog=4096;
    location / {{
      proxy_pass http://worker;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # Stream as lbproxy does (no spooling to temp files), reading up to 64 KiB at a time: the strongest of
      # the streaming set-ups tried (bench/README.md); nginx's defaults (4 KiB, buffering on) are ~2x slower
      # for 1 MiB bodies.
      proxy_buffering off;
      proxy_buffer_size 64k;
      proxy_buffers 8 64k;
    }}
    location = /ws {{
      proxy_pass http://worker;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection "upgrade";
      proxy_read_timeout 3600s;
      proxy_send_timeout 3600s;
    }}
  }}
}}
"""


def nginx_connections(nofile: int) -> int:
    """worker_connections for a descriptor limit: nginx starts closing fresh connections ("worker_connections are
    not enough, reusing connections") once fewer than 1/16 of its slots are free, so the slots must exceed the
    descriptors by that much for the descriptor limit to be what binds."""
    return max(1024, nofile + nofile // 15 + 64)


@dataclass
class NginxProxy:
    proc: Any
    port: int

    def pids(self) -> list[int]:
        return group_pids(int(self.proc.pid))


def start_nginx_proxy(procs: Processes, tmp: Path, name: str, nginx: str, upstream_port: int,
                      nofile: int) -> NginxProxy:
    """nginx ``proxy_pass`` with upstream keep-alive to ``127.0.0.1:upstream_port``, one worker, pinned."""
    port = free_port()
    d = tmp / name
    (d / "tmp").mkdir(parents=True, exist_ok=True)
    nofile = min(nofile, 70000)
    # As root, keep the starting user (as nginx_worker.sh does): "nobody" may not reach the private temp dir.
    user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};" if os.getuid() == 0 else ""
    conf = NGINX_PROXY_CONF.format(
        user=user, dir=d, nofile=nofile, connections=nginx_connections(nofile), upstream=f"{LOOPBACK}:{upstream_port}",
        listen=f"{LOOPBACK}:{port}",
    )
    (d / "nginx.conf").write_text(conf)
    proc = procs.start([nginx, "-e", "stderr", "-p", str(d), "-c", str(d / "nginx.conf"), "-g", "daemon off;"],
                       name=name, cpu=procs.server_cpu)
    try:
        wait_port(port, 10.0, proc)
    except BaseException:
        procs.stop(proc)
        raise
    return NginxProxy(proc, port)
