"""lbproxy's benchmark: the same load against the worker directly, through nginx and through ``lbproxy serve``.

    .venv/bin/python bench/run.py [--quick] [--scenarios a,b] [--repeat N] [--duration S] [--out DIR]

Prints a table (medians over the repetitions, the ratios lbproxy/nginx and lbproxy/direct, the spread) and
writes it all as JSON into ``bench/results/<UTC timestamp>-<hostname>.json``. bench/README.md says what
each scenario measures. It is a measurement, never a test: nothing here asserts a number.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# bench/ is not a package: run as a script, its directory is on sys.path and these are its sibling modules.
import loadgen
import report
import stacks
import tick
from procs import LOOPBACK, CpuMeter, Processes, http_get, open_fds, raise_nofile, rss_kib, usable_cpus, wait_fds
from report import Metric

HERE = Path(__file__).resolve().parent
HOLD = HERE / "hold.py"
SCENARIOS = ("throughput", "latency", "body_64k", "body_1m", "idle", "websockets", "cold_start", "tick")
HTTP_SCENARIOS = SCENARIOS[:4]
MB = 1e6
# A load run is flagged when other processes (or the hypervisor) took more than this share of one core.
DISTURBED = 0.05

# scenario -> (response, connections or None for --connections, rows: (key, label, unit, better, extract))
Extract = Callable[[dict[str, Any]], float]
HTTP: dict[str, tuple[str, int | None, list[tuple[str, str, str, str, Extract]]]] = {
    "throughput": ("small", None, [
        ("throughput.rps", "small GET, {c} connections", "req/s", "higher", lambda r: r["rps"]),
    ]),
    "latency": ("small", 1, [
        ("latency.p50", "small GET, 1 connection, p50", "ms", "lower", lambda r: r["latency_ms"]["p50"]),
        ("latency.p99", "small GET, 1 connection, p99", "ms", "lower", lambda r: r["latency_ms"]["p99"]),
    ]),
    "body_64k": ("64k", None, [
        ("body_64k.mbps", "64 KiB responses, {c} connections", "MB/s", "higher", lambda r: r["bytes_per_s"] / MB),
    ]),
    "body_1m": ("1m", None, [
        ("body_1m.mbps", "1 MiB responses, {c} connections", "MB/s", "higher", lambda r: r["bytes_per_s"] / MB),
    ]),
}
# lbproxy log lines that are expected in a bench run (open endpoint, a single worker by design).
LOG_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ")
EXPECTED_LOG = re.compile(r"auth\.api_keys is empty|workers\.max|single worker|headroom|execution")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Bench:
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
        self.nginx = None if args.no_nginx else stacks.nginx_path()
        self.wrk = None if args.no_wrk else loadgen.wrk_path()
        self.tool = "wrk" if self.wrk else "python"
        self.worker = stacks.nginx_worker(self.tmp) if self.nginx else stacks.echo_worker()
        # 10,000 WebSockets through a proxy hold 20,000 sockets in it.
        self.nofile = raise_nofile(max(65536, 2 * max(args.websockets, args.idle_clients) + 4096))
        self.metrics: list[Metric] = []
        self.detail: dict[str, Any] = {}
        self.notes: list[str] = []
        self.log_problems: Counter[str] = Counter()  # lbproxy's warning/error lines, timestamps cut off
        self.full_scale = {"idle": args.idle_clients >= 1000, "websockets": args.websockets >= 10000}
        self.quiet_waits = 0  # half-seconds spent waiting for other processes to calm down
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

    def start_stack(self, name: str, worker: stacks.WorkerKind) -> tuple[stacks.Lbproxy, stacks.NginxProxy | None]:
        lb = stacks.start_lbproxy(self.procs, self.tmp, f"lbproxy-{name}", worker)
        try:
            ng = (stacks.start_nginx_proxy(self.procs, self.tmp, f"nginx-{name}", self.nginx, lb.worker_port,
                                           self.nofile[0]) if self.nginx else None)
        except BaseException:
            self.stop_lbproxy(lb)
            raise
        return lb, ng

    def stop_stack(self, lb: stacks.Lbproxy, ng: stacks.NginxProxy | None) -> None:
        if ng is not None:
            self.procs.stop(ng.proc)
        self.stop_lbproxy(lb)

    def load(self, url: str, connections: int, duration: float, servers: list[int]) -> dict[str, Any]:
        """One load run; ``servers`` are the live server pids (for the CPU accounting of :class:`CpuMeter`)."""
        cmd = loadgen.load_command(self.tool, url, connections, duration)
        meter = CpuMeter(servers)
        proc = self.procs.start(cmd, name="loadgen", cpu=self.procs.loadgen_cpu, stdout=subprocess.PIPE)
        try:
            out, _ = proc.communicate(timeout=duration + 60)
        finally:
            self.procs.stop(proc)
        result = loadgen.parse_output(self.tool, out.decode("utf-8", "replace"))
        result.update(meter.stop())
        return result

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

    # -- HTTP scenarios ----------------------------------------------------------------------------

    def http_scenarios(self, names: list[str]) -> None:
        lb, ng = self.start_stack("http", self.worker)
        try:
            targets = [("direct", lb.worker_port), ("nginx", ng.port if ng else None), ("lbproxy", lb.port)]
            servers = [lb.pid, *lb.worker_pids(), *(ng.pids() if ng else [])]
            for name in names:
                self.http_scenario(name, [(c, p) for c, p in targets if p is not None], servers)
            code, body = http_get(f"http://{LOOPBACK}:{lb.admin_port}/metrics")
            self.detail["lbproxy_requests_total"] = [
                line for line in body.decode().splitlines() if line.startswith("lbproxy_requests_total")
            ] if code == 200 else f"/metrics answered {code}"
        finally:
            self.stop_stack(lb, ng)

    def http_scenario(self, name: str, targets: list[tuple[str, int]], servers: list[int]) -> None:
        a = self.args
        response, conns, rows = HTTP[name]
        conns = conns or a.connections
        path = self.worker.paths[response]
        metrics = [(Metric(key, label.format(c=conns), unit, better), fn) for key, label, unit, better, fn in rows]
        runs = []
        for rep in range(a.repeat):
            for column, port in targets:
                url = f"http://{LOOPBACK}:{port}{path}"
                if rep == 0 and a.warmup:
                    self.load(url, conns, a.warmup, servers)
                for attempt in range(1, a.retries + 2):  # a run that other processes disturbed is run again
                    self.wait_quiet(servers)
                    r = self.load(url, conns, a.duration, servers)
                    disturbed = r["other_cpu_s"] + r["steal_cpu_s"] > DISTURBED * r["seconds"]
                    if not disturbed or attempt > a.retries:
                        break
                    log(f"  {name:<10} {column:<7} {rep + 1}/{a.repeat}: disturbed (other processes used "
                        f"{r['other_cpu_s']:.2f} CPU-s), again")
                    time.sleep(2.0)
                runs.append({"repetition": rep + 1, "column": column, "attempts": attempt, **r})
                for m, fn in metrics:
                    m.add(column, fn(r))
                    if r["errors"]:
                        m.notes.append(f"{column}, repetition {rep + 1}: {r['errors']} errors {r['error_detail']}")
                    if disturbed:
                        m.notes.append(f"{column}, repetition {rep + 1}: disturbed: other processes used "
                                       f"{r['other_cpu_s']:.1f} CPU-s, steal {r['steal_cpu_s']:.1f} CPU-s in "
                                       f"{r['seconds']:.0f} s")
                log(f"  {name:<10} {column:<7} {rep + 1}/{a.repeat}: {r['rps']:>9,.0f} req/s "
                    f"{r['bytes_per_s'] / MB:>8,.1f} MB/s  p50 {r['latency_ms']['p50']:.3f} ms  "
                    f"p99 {r['latency_ms']['p99']:.3f} ms  errors {r['errors']}  "
                    f"other CPU {r['other_cpu_s']:.2f} s{'  DISTURBED' if disturbed else ''}")
        self.metrics += [m for m, _ in metrics]
        self.detail[name] = {"path": path, "connections": conns, "duration": a.duration, "runs": runs}

    # -- memory scenarios --------------------------------------------------------------------------

    def _hold(self, port: int, kind: str, count: int, path: str,
              pids: Callable[[], list[int]] | None) -> tuple[int | None, dict[str, Any]]:
        """Open ``count`` connections from another process; the RSS of ``pids`` (KiB) while they are open."""
        cmd = [sys.executable, str(HOLD), "--port", str(port), "--kind", kind, "--count", str(count), "--path", path]
        proc = self.procs.start(cmd, name="hold", cpu=self.procs.loadgen_cpu, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stdin is not None
            deadline = time.monotonic() + 120 + count / 50
            line = b""
            while not line.startswith(b"HOLD_JSON "):
                ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
                line = proc.stdout.readline() if ready else b""
                if not ready or (not line and proc.poll() is not None):
                    raise RuntimeError(f"hold.py ({kind} x{count} on port {port}) gave no report; see {self.log_dir}")
            result: dict[str, Any] = json.loads(line[len(b"HOLD_JSON "):])
            rss = None
            if pids is not None:
                time.sleep(1.0)  # let the server settle (tasks scheduled, buffers allocated)
                rss = rss_kib(pids())
            proc.stdin.close()
            proc.wait(60)
        finally:
            self.procs.stop(proc)
        return rss, result

    def memory_scenario(self, name: str, kind: str, count: int, worker: stacks.WorkerKind, path: str) -> None:
        if kind == "ws":
            rss = Metric("websockets.rss", f"{count:,} open WebSockets, RSS", "MB", "lower")
            delta = Metric("websockets.delta", f"{count:,} open WebSockets, RSS over idle", "MB", "lower")
            shown = [rss, delta]
        else:
            rss = Metric("idle.rss", f"{count:,} idle keep-alive clients, RSS", "MB", "lower")
            delta = Metric("idle.delta", f"{count:,} idle keep-alive clients, RSS over idle", "MB", "lower")
            shown = [delta]
        runs = []
        for rep in range(self.args.repeat):
            lb, ng = self.start_stack(f"{name}-{rep + 1}", worker)  # fresh processes: freed memory stays mapped
            try:
                targets: list[tuple[str, int, Callable[[], list[int]]]] = [("direct", lb.worker_port, lb.worker_pids)]
                if ng is not None:
                    targets.append(("nginx", ng.port, ng.pids))
                targets.append(("lbproxy", lb.port, lambda lb=lb: [lb.pid]))
                for column, port, pids in targets:
                    self._hold(port, kind, 10, path, None)  # warm-up: lazy set-up is not per-connection cost
                    time.sleep(0.5)
                    watched = sorted({*pids(), *lb.worker_pids()})
                    fds = open_fds(watched)
                    before = rss_kib(pids())
                    after, opened = self._hold(port, kind, count, path, pids)
                    assert after is not None
                    # The next column must not find the worker still closing these (its descriptors are few).
                    if not wait_fds(watched, fds + 200, 60.0):
                        self.notes.append(f"{name}, {column}: connections still not released after 60 s")
                    rss.add(column, after * 1024 / MB)
                    delta.add(column, (after - before) * 1024 / MB)
                    if opened["failed"]:
                        for m in shown:
                            m.notes.append(f"{column}, repetition {rep + 1}: {opened['failed']} of {count} "
                                           f"connections failed {opened['errors']}")
                    runs.append({"repetition": rep + 1, "column": column, "rss_before_kib": before,
                                 "rss_after_kib": after, **opened})
                    log(f"  {name:<10} {column:<7} {rep + 1}/{self.args.repeat}: {opened['opened']:,} open, RSS "
                        f"{before / 1024:,.1f} -> {after / 1024:,.1f} MiB")
            finally:
                self.stop_stack(lb, ng)
        self.metrics += shown
        self.detail[name] = {"kind": kind, "count": count, "worker": worker.name, "path": path, "runs": runs,
                             "rss_mb": rss.as_json()}

    # -- scale from zero, controller tick ----------------------------------------------------------

    def extrapolate_websockets(self, measured: int, wanted: int) -> None:
        """RSS at ``wanted`` sessions, linear in the per-session cost measured at ``measured`` (close to it)."""
        rss, delta = (next(m for m in self.metrics if m.key == k) for k in ("websockets.rss", "websockets.delta"))
        if measured < 0.9 * wanted:
            self.full_scale["websockets"] = False
            return
        at = Metric("websockets.rss_at_target", f"{wanted:,} open WebSockets, RSS (extrapolated)", "MB", "lower")
        for column, values in rss.values.items():
            for total, grown in zip(values, delta.values[column], strict=True):
                at.add(column, total + grown * (wanted - measured) / measured)
        at.notes.append(f"linear extrapolation from {measured:,} sessions (RSS + growth x {wanted - measured:,} "
                        f"/ {measured:,})")
        self.metrics.insert(self.metrics.index(delta) + 1, at)

    def cold_start(self) -> None:
        m = Metric("cold_start.ms", "scale-from-zero, /ping 200 -> first byte", "ms", "lower")
        runs = []
        reps = self.args.repeat if self.args.quick else max(self.args.repeat, 5)
        for rep in range(reps):
            ready_file = self.tmp / f"cold-{rep + 1}.json"
            worker = stacks.cold_worker(ready_file, self.args.cold_delay)
            lb = stacks.start_lbproxy(self.procs, self.tmp, f"lbproxy-cold-{rep + 1}", worker, active=0)
            try:
                sent, first, status = asyncio.run(asyncio.wait_for(_first_byte(lb.port, worker.paths["small"]), 60.0))
                ready = json.loads(ready_file.read_text())
                self.procs.seen.update(w["pid"] for w in lb.status()["workers"] if w.get("pid"))
            finally:
                self.stop_lbproxy(lb)
            value = (first - ready["ready_at"]) * 1000
            m.add("lbproxy", value)
            if status != 200:
                m.notes.append(f"repetition {rep + 1}: status {status}")
            runs.append({"repetition": rep + 1, "status": status, "ping_200_to_first_byte_ms": value,
                         "probe_lag_ms": (ready["first_200_at"] - ready["ready_at"]) * 1000,
                         "first_200_to_first_byte_ms": (first - ready["first_200_at"]) * 1000,
                         "request_to_first_byte_ms": (first - sent) * 1000})
            log(f"  cold_start lbproxy {rep + 1}/{reps}: /ping 200 -> first byte {value:.1f} ms "
                f"(request -> first byte {(first - sent) * 1000:.0f} ms, status {status})")
        self.metrics.append(m)
        self.detail["cold_start"] = {"worker_ready_delay_s": self.args.cold_delay, "runs": runs}

    def tick(self) -> None:
        decide = Metric("tick.ms", "controller: decide(), 1,000 workers", "ms", "lower")
        whole = Metric("tick.pool_ms", "controller: pool.snapshot() + decide()", "ms", "lower")
        runs = []
        for rep in range(self.args.repeat):
            r = tick.measure(1000, 50 if self.args.quick else 500)
            decide.add("lbproxy", r["decide"]["median_ms"])
            if "median_ms" in r["snapshot_and_decide"]:
                whole.add("lbproxy", r["snapshot_and_decide"]["median_ms"])
            runs.append(r)
            log(f"  tick       lbproxy {rep + 1}/{self.args.repeat}: decide {r['decide']['median_ms']:.3f} ms")
        self.metrics += [decide] + ([whole] if whole.values else [])
        self.detail["tick"] = {"runs": runs}

    # -- the run -----------------------------------------------------------------------------------

    def setup_facts(self) -> dict[str, Any]:
        p = self.procs
        return {
            "load_generator": f"{self.tool} ({'wrk -t1' if self.wrk else 'bench/loadgen.py, asyncio'})",
            "reference_worker": self.worker.name,
            "websocket_worker": stacks.echo_worker().name,
            "reference_proxy": f"nginx {self.nginx}" if self.nginx else None,
            "pinning": {"load_generator_cpu": p.loadgen_cpu, "servers_cpu": p.server_cpu} if self.pin else None,
            "nofile": list(self.nofile),
        }

    def run(self, scenarios: list[str]) -> dict[str, Any]:
        a = self.args
        setup = self.setup_facts()
        log(f"lbproxy bench: {', '.join(scenarios)}; {a.repeat} repetition(s) of {a.duration:g}s; "
            f"load generator {setup['load_generator']}; worker {setup['reference_worker']}")
        for line in self.absent_notes():
            log(line)
        http = [s for s in scenarios if s in HTTP_SCENARIOS]
        if http:
            self.http_scenarios(http)
        if "idle" in scenarios:
            self.memory_scenario("idle", "idle", a.idle_clients, self.worker, self.worker.paths["small"])
        if "websockets" in scenarios:
            # A proxy holds two sockets per session (client and worker side), plus its own few.
            ws = min(a.websockets, max(1, (self.nofile[0] - 200) // 2))
            if ws < a.websockets:
                self.notes.append(f"websockets: {ws:,} instead of {a.websockets:,}: a proxy needs 2 descriptors per "
                                  f"session and RLIMIT_NOFILE is {self.nofile[0]:,} here (hard limit "
                                  f"{self.nofile[1]:,}; raising it needs CAP_SYS_RESOURCE)")
            self.memory_scenario("websockets", "ws", ws, stacks.echo_worker(), "/ws")
            if ws < a.websockets:
                self.extrapolate_websockets(ws, a.websockets)
        if "cold_start" in scenarios:
            self.cold_start()
        if "tick" in scenarios:
            self.tick()
        self.failed = False
        return setup

    def absent_notes(self) -> list[str]:
        out = []
        if not self.nginx:
            out.append("nginx is " + ("disabled (--no-nginx)" if self.args.no_nginx else "not installed") +
                       ": no nginx column; the reference worker is examples/workers/echo.py "
                       "(apt-get install -y nginx wrk)")
        if not self.wrk:
            out.append("wrk is " + ("disabled (--no-wrk)" if self.args.no_wrk else "not installed") +
                       ": the Python load generator (bench/loadgen.py) ran instead (apt-get install -y nginx wrk)")
        if not self.pin:
            out.append("no CPU pinning (fewer than 2 usable cores, or --no-pin)")
        return out


async def _first_byte(port: int, path: str) -> tuple[float, float, int]:
    """Send one request; (wall time sent, wall time of the response's first byte, status)."""
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        sent = time.time()
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        first_byte = await reader.readexactly(1)
        first = time.time()
        head = first_byte + await reader.readuntil(b"\r\n\r\n")
        return sent, first, int(head[9:12])
    finally:
        writer.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="lbproxy's benchmark (see bench/README.md).")
    p.add_argument("--quick", action="store_true",
                   help="1 repetition of 1 s, 100 idle clients, 200 WebSockets, no warm-up (a smoke run)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma separated, of: {', '.join(SCENARIOS)}")
    p.add_argument("--repeat", type=int, help="repetitions per scenario (default 3; --quick 1)")
    p.add_argument("--duration", type=float, help="seconds per load run (default 5; --quick 1)")
    p.add_argument("--warmup", type=float, help="seconds of load before a column's first run (default 1; --quick 0)")
    p.add_argument("--connections", type=int, default=64, help="connections of the throughput and body scenarios")
    p.add_argument("--idle-clients", type=int, help="idle keep-alive clients (default 1000; --quick 100)")
    p.add_argument("--websockets", type=int, help="open WebSockets (default 10000; --quick 200)")
    p.add_argument("--retries", type=int, help="runs again a load run that other processes disturbed "
                   "(default 2; --quick 0)")
    p.add_argument("--quiet-wait", type=float, help="before a load run, wait at most this long for other "
                   "processes to leave the machine idle (default 20; --quick 0)")
    p.add_argument("--cold-delay", type=float, default=0.5, help="scale-from-zero: seconds until /ping turns 200")
    p.add_argument("--out", type=Path, default=HERE / "results", help="directory of the JSON results")
    p.add_argument("--no-nginx", action="store_true", help="run as if nginx were not installed")
    p.add_argument("--no-wrk", action="store_true", help="use the Python load generator even if wrk is installed")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (kept anyway on failure)")
    p.add_argument("--install", action="store_true", help="apt-get install nginx and wrk first when missing (root)")
    args = p.parse_args(argv)
    quick = args.quick
    for name, full, small in (("repeat", 3, 1), ("duration", 5.0, 1.0), ("warmup", 1.0, 0.0),
                              ("idle_clients", 1000, 100), ("websockets", 10000, 200), ("retries", 2, 0),
                              ("quiet_wait", 20.0, 0.0)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown or not chosen or args.repeat < 1 or args.duration <= 0:
        p.error(f"--scenarios takes some of {', '.join(SCENARIOS)}; --repeat >= 1, --duration > 0"
                + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    args.scenario_list = [s for s in SCENARIOS if s in chosen]
    return args


def install_tools() -> None:
    if shutil.which("nginx") and shutil.which("wrk"):
        return
    if os.geteuid() != 0:
        log("--install: not root; install them with: sudo apt-get install -y nginx wrk")
        return
    log("--install: apt-get install -y nginx wrk")
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx", "wrk"], check=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.install:
        install_tools()
    bench = Bench(args)
    atexit.register(bench.close)

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below: every process is stopped

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    try:
        setup = bench.run(args.scenario_list)
        machine = report.machine_facts(HERE.parent, bench.nginx, bench.wrk, bench.cpus)
        targets = report.evaluate_targets(bench.metrics, bench.full_scale)
        notes = bench.absent_notes() + bench.notes
        notes += [f"{m.label}: {n}" for m in bench.metrics for n in m.notes]
        data = {
            "bench": "lbproxy",
            "format": 1,
            "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
            "machine": machine,
            "setup": setup,
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "metrics": {m.key: m.as_json() for m in bench.metrics},
            "targets": targets,
            "notes": notes,
            "lbproxy_log_problems": [{"count": n, "line": line} for line, n in bench.log_problems.most_common(50)],
            "scenarios": bench.detail,
            "elapsed_seconds": round(time.monotonic() - bench.started, 1),
            "waited_for_quiet_seconds": bench.quiet_waits * 0.5,
        }
        bench.close()  # every process stopped before the results are written, so that they can say so
        data["pids_started"] = sorted(bench.procs.seen)
        path = report.write_json(args.out, data)
        print_summary(data, bench.metrics, path)
        return 0
    finally:
        bench.close()


def print_summary(data: dict[str, Any], metrics: list[Metric], path: Path) -> None:
    m, s = data["machine"], data["setup"]
    pin = s["pinning"]
    print(f"lbproxy bench, {m['date_utc']} on {m['hostname']}: {m['cpu_model']}, {m['cores']} cores, "
          f"python {m['python']}, aiohttp {m['aiohttp']}, nginx {m['nginx'] or 'absent'}, wrk {m['wrk'] or 'absent'}")
    print(f"lbproxy engine {m['lbproxy_engine']} (LBPROXY_ENGINE), httptools {m['httptools'] or 'absent'}, "
          f"uvloop {m['uvloop'] or 'absent'}")
    print(f"load generator: {s['load_generator']}; reference worker: {s['reference_worker']}; "
          + (f"load generator on cpu {pin['load_generator_cpu']}, proxies and worker on cpu {pin['servers_cpu']}"
             if pin else "not pinned"))
    print(f"medians of {data['options']['repeat']} repetition(s); spread = (max - min) / median per column "
          "(direct/nginx/lbproxy); * = see notes")
    print()
    print(report.table(metrics))
    print()
    print(report.targets_text(data["targets"]))
    for note in data["notes"]:
        print(f"note: {note}")
    problems = data["lbproxy_log_problems"]
    if problems:
        print(f"lbproxy logged {sum(p['count'] for p in problems)} warning/error line(s) (all its instances):")
        for p in problems[:5]:
            print(f"  {p['count']:>6} x {p['line'][:160]}")
    print(f"results: {path}")


if __name__ == "__main__":
    sys.exit(main())
