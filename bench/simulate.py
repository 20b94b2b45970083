"""lbproxy simulate against real runs on longer traces, and the simulator's speed.

1. For ``bursty`` and ``sparse`` (``sim_vs_real.LONG_TRACES``, 150 s each): ``lbproxy serve`` with the echo
   worker replays the trace; the figures lbproxy measured (access log, /status cost block) are printed beside the
   simulator's, on the run's own access log with its cold starts (the test's comparison) and on the trace as
   generated.
2. Speed: a day of a 10 req/s ``steady`` trace (~864,000 requests), one setting, then a grid of four.

    .venv/bin/python bench/simulate.py [--skip-real] [--skip-speed] [--out DIR]

A measurement, not a test: it prints figures and writes them as JSON (``--out``, default bench/results).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import sim_vs_real  # bench/ is on sys.path when this runs as a script
import yaml

from lbproxy.config import parse_config
from lbproxy.simulate.coldstart import parse_cold_start
from lbproxy.simulate.endpoint import Model, simulate
from lbproxy.simulate.traces import synthetic

HERE = Path(__file__).resolve().parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _get(url: str) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            data: dict[str, Any] = await resp.json()
            return data
    except aiohttp.ClientError:
        return None


async def _poll(what: str, check: Any, within: float) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise RuntimeError(f"timed out after {within:g}s waiting for {what}")


def _serve(config: Path, log_path: Path, data: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ECHO_", "LBPROXY_"))}
    env["LBPROXY_DATA_DIR"] = str(data)
    with log_path.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "lbproxy", "serve", str(config), "--log-level", "debug"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                cwd=sim_vs_real.ROOT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (lbproxy stops its workers), then SIGKILL to the whole group if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


async def real_run(name: str, spec: str, workdir: Path) -> dict[str, Any]:
    listen, admin = f"127.0.0.1:{_port()}", f"127.0.0.1:{_port()}"
    config = {"name": f"sim-{name}", "listen": listen, "admin": admin, **sim_vs_real.endpoint_settings()}
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = workdir / f"{name}.log"
    proc = _serve(path, log_path, workdir / "data")
    try:
        await _poll("lbproxy's admin port", lambda: _get(f"http://{admin}/healthz"), 30)
        trace = synthetic(spec)
        print(f"{name}: replaying {len(trace)} requests over {trace.duration:.0f}s ...", file=sys.stderr, flush=True)
        statuses = await sim_vs_real.replay(f"http://{listen}", trace)

        async def idle() -> dict[str, Any] | None:
            status = await _get(f"http://{admin}/status")
            return status if status is not None and not status["workers"] else None
        status = await _poll("every worker to stop", idle, 120)
    finally:
        _stop(proc)
    real = sim_vs_real.measure(log_path.read_text(errors="replace"), status)
    predicted = sim_vs_real.predict(config, real)
    nominal = sim_vs_real.predict_nominal(config, spec, real)
    rows = sim_vs_real.compare(real, predicted)
    print(f"\n{name}: {len(statuses)} requests ({sorted(set(statuses))}), {len(real.cold_starts)} cold starts "
          f"(mean {sum(real.cold_starts) / max(1, len(real.cold_starts)):.2f}s), mean stop "
          f"{sum(real.stop_times) / max(1, len(real.stop_times)):.2f}s")
    print(sim_vs_real.table("  real run vs the simulator on its access log and cold starts", rows))
    print(sim_vs_real.table("  real run vs the simulator on the trace as generated",
                            sim_vs_real.compare(real, nominal)))
    return {"trace": spec, "requests": len(statuses), "cold_starts": real.cold_starts, "stop_times": real.stop_times,
            "on_access_log": [dict(zip(("figure", "real", "simulated", "error", "allowed"), r, strict=True))
                              for r in rows],
            "on_trace": [dict(zip(("figure", "real", "simulated", "error", "allowed"), r, strict=True))
                         for r in sim_vs_real.compare(real, nominal)]}


def speed() -> dict[str, Any]:
    began = time.perf_counter()
    trace = synthetic("steady:rate=10,duration=24h")
    generated = time.perf_counter() - began
    base = {"name": "speed", "workers": {"max": 10, "concurrency": 4}, "timeouts": {"idle": "10s"},
            "cost": {"category": "24gb"}}
    runs = []
    for idle, active in (("10s", 0), ("5s", 0), ("60s", 0), ("10s", 2), ("10s", 0)):
        cfg = parse_config({**base, "workers": {**base["workers"], "active": active},
                            "timeouts": {"idle": idle}}, environ={})
        cpu = time.process_time()
        o = simulate(cfg, trace, Model(parse_cold_start("30s")))
        runs.append({"idle": idle, "active": active, "wall_s": round(o.wall_seconds, 3),
                     "cpu_s": round(time.process_time() - cpu, 3), "cost": round(o.cost, 2)})
    print(f"\nspeed: a day of steady 10 req/s = {len(trace):,} requests (generated in {generated:.2f}s)")
    for r in runs:
        print(f"  timeouts.idle={r['idle']}, workers.active={r['active']}: {r['wall_s']:.2f}s wall, "
              f"{r['cpu_s']:.2f}s CPU ({len(trace) / r['wall_s']:,.0f} requests/s), ${r['cost']}")
    return {"requests": len(trace), "generated_s": round(generated, 3), "runs": runs}


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    result: dict[str, Any] = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if not args.skip_real:
        with tempfile.TemporaryDirectory(prefix="lbproxy-sim-bench-") as tmp:
            result["real"] = {name: await real_run(name, spec, Path(tmp))
                              for name, spec in sim_vs_real.LONG_TRACES.items()}
    if not args.skip_speed:
        result["speed"] = speed()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"simulate-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"\nwrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
