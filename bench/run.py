"""lbproxy's benchmark: the same load against the worker directly, through nginx, HAProxy and Caddy, and
through ``lbproxy serve``, in one run, each proxy sharing one pinned core with the worker.

    .venv/bin/python bench/run.py [--quick] [--scenarios a,b] [--repeat N] [--duration S] [--out DIR]

Prints a table (medians over the repetitions, lbproxy's ratio against each peer and direct, the spread) and
writes it all as JSON into ``bench/results/<UTC timestamp>-<hostname>.json``. bench/README.md says what each
scenario measures. It is a measurement, never a test: nothing here asserts a number.

The scenarios live in ``http_load.py``, ``memory.py``, ``ws_echo.py`` and ``control_plane.py``; the peers'
configurations in ``peers.py``; the shared machinery in ``harness.py``; the table in ``table.py``.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# bench/ is not a package: run as a script, its directory is on sys.path and these are its sibling modules.
import control_plane
import http_load
import memory
import peers
import report
import stacks
import table
import ws_echo
from harness import Harness, log

HERE = Path(__file__).resolve().parent
SCENARIOS = (*http_load.SCENARIOS, "ws_echo", "idle", "websockets", "cold_start", "tick")


def run(h: Harness, scenarios: list[str]) -> dict[str, Any]:
    a = h.args
    setup = h.setup_facts()
    present = [name for name, path in h.peer_paths.items() if path]
    log(f"lbproxy bench: {', '.join(scenarios)}; {a.repeat} repetition(s) of {a.duration:g}s; "
        f"load generator {setup['load_generator']}; worker {setup['reference_worker']}; "
        f"peers {', '.join(present) or 'none'}")
    for line in h.absent_notes():
        log(line)
    http = [s for s in scenarios if s in http_load.SCENARIOS]
    if http:
        http_load.run(h, http)
    if "ws_echo" in scenarios and h.picows:
        ws_echo.run(h)
    if "idle" in scenarios:
        memory.run(h, "idle", "idle", a.idle_clients, h.worker, h.worker.paths["small"])
    if "websockets" in scenarios:
        # A proxy holds two sockets per session (client and worker side), plus its own few.
        ws = min(a.websockets, max(1, (h.nofile[0] - 200) // 2))
        if ws < a.websockets:
            h.notes.append(f"websockets: {ws:,} instead of {a.websockets:,}: a proxy needs 2 descriptors per "
                           f"session and RLIMIT_NOFILE is {h.nofile[0]:,} here (hard limit {h.nofile[1]:,}; "
                           f"raising it needs CAP_SYS_RESOURCE)")
        memory.run(h, "websockets", "ws", ws, stacks.echo_worker(), "/ws")
        if ws < a.websockets:
            memory.extrapolate_websockets(h, ws, a.websockets)
    if "cold_start" in scenarios:
        control_plane.cold_start(h)
    if "tick" in scenarios:
        control_plane.tick(h)
    h.failed = False
    return setup


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="lbproxy's benchmark (see bench/README.md).")
    p.add_argument("--quick", action="store_true",
                   help="1 repetition of 1 s, 100 idle clients, 200 WebSockets, no warm-up (a smoke run)")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma separated, of: {', '.join(SCENARIOS)}")
    p.add_argument("--repeat", type=int, help="repetitions per scenario (default 3; --quick 1)")
    p.add_argument("--duration", type=float, help="seconds per load run (default 5; --quick 1)")
    p.add_argument("--warmup", type=float, help="seconds of load before a column's first run (default 1; --quick 0)")
    p.add_argument("--connections", type=int, default=64, help="connections of the throughput and body scenarios")
    p.add_argument("--ws-sessions", type=int, default=64, help="WebSocket echo: sessions, one message in flight each")
    p.add_argument("--ws-message-bytes", type=int, default=1024, help="WebSocket echo: message size")
    p.add_argument("--idle-clients", type=int, help="idle keep-alive clients (default 1000; --quick 100)")
    p.add_argument("--websockets", type=int, help="open WebSockets (default 10000; --quick 200)")
    p.add_argument("--retries", type=int, help="runs again a load run that other processes disturbed "
                   "(default 2; --quick 0)")
    p.add_argument("--quiet-wait", type=float, help="before a load run, wait at most this long for other "
                   "processes to leave the machine idle (default 20; --quick 0)")
    p.add_argument("--cold-delay", type=float, default=0.5, help="scale-from-zero: seconds until /ping turns 200")
    p.add_argument("--out", type=Path, default=HERE / "results", help="directory of the JSON results")
    for name in peers.PEERS:
        p.add_argument(f"--no-{name}", action="store_true", help=f"run as if {name} were not installed")
    p.add_argument("--no-wrk", action="store_true", help="use the Python load generator even if wrk is installed")
    p.add_argument("--no-picows", action="store_true", help="run as if picows were not installed (no ws_echo)")
    p.add_argument("--access-log", action="store_true",
                   help="lbproxy writes its access log (log.access: true) to its log file: what the log costs")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--keep-logs", action="store_true", help="keep the processes' logs (kept anyway on failure)")
    p.add_argument("--install", action="store_true", help="install what is missing first: nginx, wrk, haproxy and "
                   "caddy (apt-get, as root), picows (pip, into this interpreter's environment)")
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
    """``--install``: the Debian packages of the peers and wrk, and picows, when missing."""
    missing = [pkg for tool, pkg in (*((n, peers.PACKAGES[n]) for n in peers.PEERS), ("wrk", "wrk"))
               if not (peers.find(tool) if tool in peers.PACKAGES else shutil.which(tool))]
    if missing and (os.geteuid() != 0 or shutil.which("apt-get") is None):
        log(f"--install: cannot apt-get here (not root, or no apt-get); install them with: "
            f"sudo apt-get install -y {' '.join(missing)}")
    elif missing:
        log(f"--install: apt-get install -y {' '.join(missing)}")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=False)
    if importlib.util.find_spec("picows") is None:
        log("--install: pip install picows")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "picows"], check=False)
        importlib.invalidate_caches()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.install:
        install_tools()
    h = Harness(args)
    atexit.register(h.close)

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally below: every process is stopped

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    try:
        setup = run(h, args.scenario_list)
        versions = {name: (peers.version(name, path) if path else None) for name, path in h.peer_paths.items()}
        machine = report.machine_facts(HERE.parent, versions, h.wrk, h.cpus)
        targets = report.evaluate_targets(h.metrics, h.full_scale)
        notes = h.absent_notes() + h.notes
        notes += [f"{m.label}: {n}" for m in h.metrics for n in m.notes]
        data = {
            "bench": "lbproxy",
            "format": 2,  # 2: peers (haproxy, caddy) beside nginx, the ws_echo scenario, per-core busy shares
            "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
            "machine": machine,
            "setup": setup,
            "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "metrics": {m.key: m.as_json() for m in h.metrics},
            "targets": targets,
            "notes": notes,
            "lbproxy_log_problems": [{"count": n, "line": line} for line, n in h.log_problems.most_common(50)],
            "scenarios": h.detail,
            "elapsed_seconds": round(time.monotonic() - h.started, 1),
            "waited_for_quiet_seconds": h.quiet_waits * 0.5,
            "load_runs_rerun": h.reruns,
        }
        h.close()  # every process stopped before the results are written, so that they can say so
        data["pids_started"] = sorted(h.procs.seen)
        path = report.write_json(args.out, data)
        table.print_summary(data, h.metrics, path)
        return 0
    finally:
        h.close()


if __name__ == "__main__":
    sys.exit(main())
