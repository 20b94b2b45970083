"""One bench run's machinery, shared by the scenario runners: the processes, the stacks (lbproxy, its worker and
the peers pointed at that worker), a load run with its CPU accounting, the wait for a quiet machine and the
re-run of disturbed runs, and what the run collects (rows, details, notes, lbproxy's log problems)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import loadgen
import peers
import stacks
from procs import CpuMeter, Processes, raise_nofile, usable_cpus
from report import Metric

# A load run is flagged when other processes (or the hypervisor) took more than this share of one core.
DISTURBED = 0.05
# lbproxy log lines that are expected in a bench run (open endpoint, a single worker by design).
LOG_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
EXPECTED_LOG = re.compile(r"auth\.api_keys is empty|workers\.max|single worker|headroom|execution")

Pids = Callable[[], list[int]]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Stack:
    """lbproxy with its one worker, and every peer proxying to that same worker."""

    lb: stacks.Lbproxy
    peers: list[peers.Peer]

    def targets(self) -> list[tuple[str, int, Pids]]:
        """(column, port, the pids whose memory is that column's) in the table's order."""
        lb = self.lb
        return [("direct", lb.worker_port, lb.worker_pids), *((p.name, p.port, p.pids) for p in self.peers),
                ("lbproxy", lb.port, lambda: [lb.pid])]

    def server_pids(self) -> list[int]:
        return [self.lb.pid, *self.lb.worker_pids(), *(pid for p in self.peers for pid in p.pids())]


class Harness:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="lbproxy-bench-"))
        self.log_dir = Path(tempfile.mkdtemp(prefix="lbproxy-bench-logs-"))
        self.cpus = cpus = usable_cpus()
        self.pin = len(cpus) >= 2 and not args.no_pin
        self.procs = Processes(self.log_dir, self.pin, cpus[0], cpus[1] if len(cpus) > 1 else cpus[0])
        if self.pin:  # the bench itself stays off the servers' core
            os.sched_setaffinity(0, {self.procs.loadgen_cpu})
        disabled = {"nginx": args.no_nginx, "haproxy": args.no_haproxy, "caddy": args.no_caddy}
        self.peer_paths = {name: (None if disabled[name] else peers.find(name)) for name in peers.PEERS}
        self.nginx = self.peer_paths["nginx"]
        self.wrk = None if args.no_wrk else loadgen.wrk_path()
        self.tool = "wrk" if self.wrk else "python"
        self.picows = not args.no_picows and importlib.util.find_spec("picows") is not None
        self.worker = stacks.nginx_worker(self.tmp) if self.nginx else stacks.echo_worker()
        # 10,000 WebSockets through a proxy hold 20,000 sockets in it.
        self.nofile = raise_nofile(max(65536, 2 * max(args.websockets, args.idle_clients) + 4096))
        self.metrics: list[Metric] = []
        self.detail: dict[str, Any] = {}
        self.notes: list[str] = []
        self.log_problems: Counter[str] = Counter()  # lbproxy's warning/error lines, timestamps cut off
        self.full_scale = {"idle": args.idle_clients >= 1000, "websockets": args.websockets >= 10000}
        self.quiet_waits = 0  # half-seconds spent waiting for other processes to calm down
        self.reruns = 0  # load runs run again because other processes disturbed them
        self.closed = False
        self.failed = True

    # -- processes ---------------------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.procs.stop_all()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if self.failed or self.args.keep_logs:
            log(f"process logs kept in {self.log_dir}")
        else:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def stop_lbproxy(self, lb: stacks.Lbproxy) -> None:
        self.procs.stop(lb.proc)
        for line in lb.log_path.read_text(errors="replace").splitlines():
            if re.search(r" (WARNING|ERROR|CRITICAL) |Traceback", line) and not EXPECTED_LOG.search(line):
                self.log_problems[LOG_STAMP.sub("", line.strip())] += 1

    def start_stack(self, name: str, worker: stacks.WorkerKind) -> Stack:
        lb = stacks.start_lbproxy(self.procs, self.tmp, f"lbproxy-{name}", worker, access_log=self.args.access_log)
        stack = Stack(lb, [])
        try:
            for peer, path in self.peer_paths.items():
                if path:
                    stack.peers.append(peers.start(self.procs, self.tmp, peer, name, path, lb.worker_port,
                                                   self.nofile[0]))
        except BaseException:
            self.stop_stack(stack)
            raise
        return stack

    def stop_stack(self, stack: Stack) -> None:
        for p in stack.peers:
            self.procs.stop(p.proc)
        self.stop_lbproxy(stack.lb)

    # -- load runs ---------------------------------------------------------------------------------

    def run_load(self, cmd: list[str], parse: Callable[[str], dict[str, Any]], duration: float,
                 servers: list[int]) -> dict[str, Any]:
        """One load generator run on its core; ``servers`` are the live server pids (for :class:`CpuMeter`)."""
        meter = CpuMeter(servers)
        proc = self.procs.start(cmd, name="loadgen", cpu=self.procs.loadgen_cpu, stdout=subprocess.PIPE)
        try:
            out, _ = proc.communicate(timeout=duration + 60)
        finally:
            self.procs.stop(proc)
        result = parse(out.decode("utf-8", "replace"))
        result.update(meter.stop())
        return result

    def http_load(self, url: str, connections: int, duration: float, servers: list[int]) -> dict[str, Any]:
        cmd = loadgen.load_command(self.tool, url, connections, duration)
        return self.run_load(cmd, lambda out: loadgen.parse_output(self.tool, out), duration, servers)

    def wait_quiet(self, servers: list[int]) -> None:
        """Wait (at most ``--quiet-wait`` s) until other processes leave the machine alone for half a second."""
        deadline = time.monotonic() + self.args.quiet_wait
        while True:
            meter = CpuMeter(servers)
            time.sleep(0.5)
            used = meter.stop()
            if used["other_cpu_s"] + used["steal_cpu_s"] <= DISTURBED * 0.5 or time.monotonic() > deadline:
                return
            self.quiet_waits += 1

    def measured(self, what: str, run: Callable[[], dict[str, Any]], servers: list[int]) -> tuple[dict[str, Any],
                                                                                                 int, bool]:
        """``run`` once the machine is quiet, again (``--retries``) while other processes disturbed it.

        Returns the last result, the attempts and whether it was still disturbed."""
        a = self.args
        for attempt in range(1, a.retries + 2):
            self.wait_quiet(servers)
            r = run()
            disturbed = r["other_cpu_s"] + r["steal_cpu_s"] > DISTURBED * r["seconds"]
            if not disturbed or attempt > a.retries:
                return r, attempt, disturbed
            self.reruns += 1
            log(f"  {what}: disturbed (other processes used {r['other_cpu_s']:.2f} CPU-s), again")
            time.sleep(2.0)
        raise AssertionError("unreachable")

    @staticmethod
    def disturbed_note(column: str, rep: int, r: dict[str, Any]) -> str:
        return (f"{column}, repetition {rep}: disturbed: other processes used {r['other_cpu_s']:.1f} CPU-s, "
                f"steal {r['steal_cpu_s']:.1f} CPU-s in {r['seconds']:.0f} s")

    # -- facts -------------------------------------------------------------------------------------

    def setup_facts(self) -> dict[str, Any]:
        p = self.procs
        return {
            "load_generator": f"{self.tool} ({'wrk -t1' if self.wrk else 'bench/loadgen.py, asyncio'})",
            "websocket_load_generator": "bench/ws_load.py (picows)" if self.picows else None,
            "reference_worker": self.worker.name,
            "websocket_worker": stacks.echo_worker().name,
            "websocket_echo_worker": stacks.ws_echo_worker().name if self.picows else None,
            "peers": {name: path for name, path in self.peer_paths.items()},
            "pinning": {"load_generator_cpu": p.loadgen_cpu, "servers_cpu": p.server_cpu} if self.pin else None,
            "nofile": list(self.nofile),
        }

    def absent_notes(self) -> list[str]:
        a, out = self.args, []
        for name, path in self.peer_paths.items():
            if path is None:
                flag = getattr(a, f"no_{name}")
                why = f"disabled (--no-{name})" if flag else "not installed"
                out.append(f"{name} is {why}: no {name} column (apt-get install -y {peers.PACKAGES[name]}, or "
                           f"run with --install)" + ("; the reference worker is examples/workers/echo.py"
                                                     if name == "nginx" else ""))
        if not self.wrk:
            out.append("wrk is " + ("disabled (--no-wrk)" if a.no_wrk else "not installed") +
                       ": the Python load generator (bench/loadgen.py) ran instead (apt-get install -y wrk)")
        if not self.picows and "ws_echo" in a.scenario_list:
            out.append("picows is " + ("disabled (--no-picows)" if a.no_picows else "not installed") +
                       ": no WebSocket echo scenario (pip install picows, or run with --install)")
        if not self.pin:
            out.append("no CPU pinning (fewer than 2 usable cores, or --no-pin)")
        return out
