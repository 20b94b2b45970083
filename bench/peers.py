"""The reference proxies beside lbproxy: nginx, HAProxy and Caddy, each configured as a production user would
configure a reverse proxy with upstream keep-alive, and started pinned to the servers' core.

Each peer points at the same worker as lbproxy (the bench reads its address from lbproxy's ``/status``), runs
one worker process or thread (it has one core, shared with the worker), logs no request, and holds enough
connections for the memory scenarios (the descriptor limit, not a connection cap, is what binds). A peer that
is not installed is left out, and the run says so (``--install`` installs the Debian packages).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import LOOPBACK, Processes, free_port, group_pids, wait_port

PEERS = ("nginx", "haproxy", "caddy")
PACKAGES = {"nginx": "nginx", "haproxy": "haproxy", "caddy": "caddy"}  # the Debian packages
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/usr/local/bin", "/usr/local/nginx/sbin")


def find(name: str) -> str | None:
    """The peer's binary, from PATH or the usual sbin directories (which a non-root PATH may lack)."""
    return shutil.which(name) or next((f"{d}/{name}" for d in _SBIN if Path(f"{d}/{name}").exists()), None)


def version(name: str, path: str) -> str | None:
    argv = {"nginx": [path, "-v"], "haproxy": [path, "-v"], "caddy": [path, "version"]}[name]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = (out.stdout + out.stderr).strip().splitlines()
    if not first:
        return None
    line = first[0]
    if name == "nginx":
        return line.removeprefix("nginx version: ").removeprefix("nginx/")
    if name == "haproxy":
        return line.removeprefix("HAProxy version ").split(" ")[0]
    return line.split(" ")[0].removeprefix("v")


@dataclass
class Peer:
    name: str
    proc: Any
    port: int

    def pids(self) -> list[int]:
        return group_pids(int(self.proc.pid))


# -- nginx -------------------------------------------------------------------------------------------------

NGINX_CONF = """\
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


def _nginx(d: Path, path: str, listen: int, upstream: int, nofile: int) -> tuple[list[str], dict[str, str]]:
    nofile = min(nofile, 70000)
    (d / "tmp").mkdir(parents=True, exist_ok=True)
    # As root, keep the starting user (as nginx_worker.sh does): "nobody" may not reach the private temp dir.
    user = f"user {pwd.getpwuid(os.getuid()).pw_name} {grp.getgrgid(os.getgid()).gr_name};" if os.getuid() == 0 else ""
    (d / "nginx.conf").write_text(NGINX_CONF.format(
        user=user, dir=d, nofile=nofile, connections=nginx_connections(nofile), upstream=f"{LOOPBACK}:{upstream}",
        listen=f"{LOOPBACK}:{listen}"))
    return [path, "-e", "stderr", "-p", str(d), "-c", str(d / "nginx.conf"), "-g", "daemon off;"], {}


# -- HAProxy -----------------------------------------------------------------------------------------------

HAPROXY_CONF = """\
global
  nbthread 1
  maxconn {maxconn}
  # no "log" line: nothing is logged

defaults
  mode http
  maxconn {maxconn}
  option http-keep-alive
  # Reuse idle worker connections for any client's requests, as nginx's "keepalive 64" and lbproxy's pool do.
  http-reuse always
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
  timeout http-keep-alive 300s
  timeout http-request 60s

frontend bench
  bind {listen}
  default_backend worker

backend worker
  server worker {upstream}
"""


def haproxy_maxconn(nofile: int) -> int:
    """Two descriptors per proxied connection (client and worker side), less a margin for listeners and logs."""
    return max(1000, (nofile - 100) // 2)


def _haproxy(d: Path, path: str, listen: int, upstream: int, nofile: int) -> tuple[list[str], dict[str, str]]:
    (d / "haproxy.cfg").write_text(HAPROXY_CONF.format(
        maxconn=haproxy_maxconn(nofile), listen=f"{LOOPBACK}:{listen}", upstream=f"{LOOPBACK}:{upstream}"))
    # -db: stay in the foreground, one process (no master-worker), so SIGTERM stops it and its RSS is one process.
    return [path, "-db", "-f", str(d / "haproxy.cfg")], {}


# -- Caddy -------------------------------------------------------------------------------------------------

CADDYFILE = """\
{{
  admin off
  auto_https off
  log {{
    level ERROR
  }}
}}

http://{listen} {{
  # No "log" directive: no access log. WebSocket upgrades are proxied as such by reverse_proxy.
  reverse_proxy {upstream} {{
    transport http {{
      # The default transport keeps worker connections alive; keep as many idle as nginx's "keepalive 64"
      # (Caddy's default is 32 per host, which would close and reopen connections at 64 clients).
      keepalive 300s
      keepalive_idle_conns_per_host 64
    }}
  }}
}}
"""


def _caddy(d: Path, path: str, listen: int, upstream: int, nofile: int) -> tuple[list[str], dict[str, str]]:
    (d / "Caddyfile").write_text(CADDYFILE.format(listen=f"{LOOPBACK}:{listen}", upstream=f"{LOOPBACK}:{upstream}"))
    # Caddy keeps its state (an autosave of the config) under XDG directories: keep them in the temporary
    # directory. GOMAXPROCS=1:
    # one core (taskset gives the same, this says it).
    env = {"XDG_DATA_HOME": str(d / "data"), "XDG_CONFIG_HOME": str(d / "config"), "HOME": str(d),
           "GOMAXPROCS": "1"}
    return [path, "run", "--config", str(d / "Caddyfile"), "--adapter", "caddyfile"], env


_CONFIGS: dict[str, Callable[[Path, str, int, int, int], tuple[list[str], dict[str, str]]]] = {
    "nginx": _nginx, "haproxy": _haproxy, "caddy": _caddy,
}


def start(procs: Processes, tmp: Path, name: str, tag: str, path: str, upstream_port: int, nofile: int) -> Peer:
    """Peer ``name`` proxying ``127.0.0.1:upstream_port`` on a fresh loopback port, pinned to the servers' core."""
    port = free_port()
    d = tmp / f"{name}-{tag}"
    d.mkdir(parents=True, exist_ok=True)
    argv, env = _CONFIGS[name](d, path, port, upstream_port, nofile)
    proc = procs.start(argv, name=f"{name}-{tag}", cpu=procs.server_cpu, env=env)
    try:
        wait_port(port, 15.0, proc)
    except BaseException:
        procs.stop(proc)
        raise
    return Peer(name, proc, port)
