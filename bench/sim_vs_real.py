"""The simulator against a real run: replay a trace on ``lbproxy serve`` with the echo worker, read what lbproxy
itself measured, and simulate the same traffic; used by tests/test_simulate_real.py and bench/simulate.py.

What the real run measured comes from lbproxy only: its JSON log (``log.format: json``, ``log.access: true``)
gives every request's queue wait and, from the lines ``scale up: starting N``, ``worker W started``, ``worker W
ready after``, ``scale down: draining worker W`` and ``worker W (pid P) exited``, each worker's cold start and
stop time; its admin ``/status`` cost block gives the billed worker-seconds and dollars.

The prediction is robust on a loaded machine because it is fed what the machine really did, not what was asked
of it: the arrivals and service times are the access log's (``lbproxy simulate`` reads it as a trace), the cold
starts are the ones the run had, worker by worker in start order (``seq(...)``), from the decision to start a
worker to its ready, with the process spawn (decision to ``started``: 40-140 ms on a loaded machine, unbilled, as
lbproxy bills) as ``Model.unbilled``, and each worker's own stop time (``Model.stop_times``: 0.1-0.6 s under
load, and a bill is rounded up to the second per worker, so a mean flipped a worker's last second now and then).
Measured from ``started`` instead, every simulated wait came out one spawn shorter, and a worker ready just
before ``scaling.queue_delay`` in the simulator but just after it in the real run started one worker more on
one side only. What is left to compare is the model itself: the queue, the controller's decisions, the drains
and the bill.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lbproxy.config import parse_config  # noqa: E402
from lbproxy.simulate.coldstart import ColdStart, parse_cold_start  # noqa: E402
from lbproxy.simulate.endpoint import Model, simulate  # noqa: E402
from lbproxy.simulate.results import Outcome, percentile  # noqa: E402
from lbproxy.simulate.traces import Trace, parse_trace, synthetic  # noqa: E402

ECHO = ROOT / "examples" / "workers" / "echo.py"
COLD_START = 1.0  # ECHO_INIT_DELAY: the worker's own part of its cold start

# The shortened traces of the test (~30 s each) and the longer ones of the benchmark. The bursty one: bursts of
# 8 requests within 2 s every ~9 s, which scale up to workers.max and drain between bursts; the sparse one:
# single requests whose gaps mostly outlast timeouts.idle, so that most pay a cold start. The seeds are ones
# whose outcome (workers started, peak) stays the same for cold starts from 1.05 to 1.65 s and stop times
# from 0.05 to 0.4 s: no request lands within a few tenths of a second of a drain, where the machine's jitter
# could decide for the real run what exact arithmetic decides for the simulator.
TRACES = {
    "bursty": "bursty:rate=0.05,every=9,size=8,spread=2,duration=30,service=0.6,cv=0.3,seed=51",
    "sparse": "sparse:gap=3.5,duration=30,service=0.5,cv=0.3,seed=13",
}
LONG_TRACES = {
    "bursty": "bursty:rate=0.05,every=15,size=10,spread=3,duration=150,service=0.6,cv=0.3,seed=5",
    "sparse": "sparse:gap=5,duration=150,service=0.5,cv=0.3,seed=3",
}
# Agreement the issue asks for: relative error at most this, per figure.
TOLERANCE = {"worker_seconds": 0.10, "cost_dollars": 0.10, "wait_p50_s": 0.10, "wait_p99_s": 0.20}


def endpoint_settings() -> dict[str, Any]:
    """The settings both sides run (merged over the test's base config by the test, complete in the bench)."""
    return {
        "workers": {"active": 0, "max": 3, "concurrency": 2},
        "timeouts": {"idle": "2s", "wait": "60s", "init": "30s", "execution": "60s"},
        "scaling": {"strategy": "queue_delay", "queue_delay": "2s"},
        "log": {"access": True, "format": "json"},
        "cost": {"category": "24gb"},
        "worker": {"command": [sys.executable, str(ECHO)], "env": {"ECHO_INIT_DELAY": str(COLD_START)}},
    }


async def replay(url: str, trace: Trace) -> list[int]:
    """Send ``GET /sleep?s=SERVICE`` at each arrival (from now), all at once as the trace says; the statuses."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2

    async def one(session: aiohttp.ClientSession, at: float, service: float) -> int:
        await asyncio.sleep(max(0.0, start + at - loop.time()))
        async with session.get(f"{url}/sleep", params={"s": f"{service:.6f}"}) as resp:
            await resp.read()
            return resp.status

    timeout = aiohttp.ClientTimeout(total=180)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        return list(await asyncio.gather(*(one(session, a, s) for a, s in zip(trace.arrivals, trace.services,
                                                                               strict=True))))


@dataclass(frozen=True)
class RealRun:
    """What lbproxy measured."""

    log: str  # the JSON log (lbproxy's stderr)
    worker_seconds: float
    cost_dollars: float
    waits: list[float]  # sorted
    cold_starts: list[float]  # per worker, in start order: from the decision to start it to its ready
    spawns: list[float]  # of which, before the backend reported it (unbilled: lbproxy bills from then on)
    stop_times: list[float]  # per worker drained, in start order
    statuses: dict[int, int]

    def figures(self) -> dict[str, float]:
        return {"worker_seconds": self.worker_seconds, "cost_dollars": self.cost_dollars,
                "wait_p50_s": percentile(self.waits, 50), "wait_p99_s": percentile(self.waits, 99)}


def _lines(log: str) -> list[dict[str, Any]]:
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def measure(log: str, status: Mapping[str, Any]) -> RealRun:
    """Read the run's figures from lbproxy's JSON log and its final ``/status``."""
    lines = _lines(log)
    waits = sorted(float(d["wait_s"]) for d in lines if d.get("logger") == "lbproxy.access")
    statuses: dict[int, int] = {}
    for d in lines:
        if d.get("logger") == "lbproxy.access":
            statuses[int(d["status"])] = statuses.get(int(d["status"]), 0) + 1
    started: dict[str, float] = {}
    decided: dict[str, float] = {}  # when the controller decided to start the worker
    pending: list[float] = []  # the decision times of starts not yet seen in the log, oldest first
    ready: dict[str, float] = {}
    draining: dict[str, float] = {}
    stops: dict[str, float] = {}
    for d in lines:
        words = str(d.get("message", "")).split()
        if len(words) < 3 or words[0] not in ("worker", "scale"):
            continue
        ts = float(d["ts"])
        if words[:3] == ["scale", "up:", "starting"]:
            pending += [ts] * int(words[3])
        elif words[0] == "worker" and words[2] == "started:":
            started[words[1]] = ts
            decided[words[1]] = pending.pop(0) if pending else ts
        elif words[0] == "worker" and words[2:4] == ["ready", "after"]:
            ready[words[1]] = ts
        elif words[:4] == ["scale", "down:", "draining", "worker"]:
            draining[words[4]] = ts
        elif words[0] == "worker" and words[2].startswith("(pid") and "exited:" in words and words[1] in draining:
            stops[words[1]] = ts - draining[words[1]]
    order = [w for w, _ in sorted(started.items(), key=lambda kv: kv[1]) if w in ready]
    colds = [ready[w] - decided[w] for w in order]
    spawns = [started[w] - decided[w] for w in order]
    cost = status["cost"]
    return RealRun(log, float(cost["total_seconds"]), float(cost["total_dollars"]), waits, colds, spawns,
                   [stops[w] for w in order if w in stops], statuses)


def predict(config: Mapping[str, Any], real: RealRun) -> Outcome:
    """The simulator on the traffic lbproxy logged, with the cold starts and stop time the run had."""
    trace = parse_trace("the real run's access log", real.log)
    return simulate(parse_config(dict(config), environ={}), trace, model_of(real))


def predict_nominal(config: Mapping[str, Any], spec: str, real: RealRun) -> Outcome:
    """The simulator on the trace as generated (what the load generator was asked to send), for comparison."""
    return simulate(parse_config(dict(config), environ={}), synthetic(spec), model_of(real))


def model_of(real: RealRun) -> Model:
    def seq(values: list[float]) -> ColdStart:
        return parse_cold_start("seq(" + ",".join(f"{v:.6f}" for v in values) + ")")
    stopped_all = bool(real.stop_times) and len(real.stop_times) == len(real.cold_starts)
    return Model(seq(real.cold_starts or [COLD_START]),
                 stop_time=statistics.mean(real.stop_times) if real.stop_times else 0.0,
                 unbilled=seq(real.spawns) if real.spawns else None,
                 stop_times=seq(real.stop_times) if stopped_all else None)


def sim_figures(o: Outcome) -> dict[str, float]:
    return {"worker_seconds": o.totals.total_seconds, "cost_dollars": o.cost, "wait_p50_s": o.wait(50),
            "wait_p99_s": o.wait(99)}


def compare(real: RealRun, o: Outcome) -> list[tuple[str, float, float, float, float]]:
    """(figure, real, simulated, relative error, tolerance) for each figure the issue names."""
    rows = []
    sim = sim_figures(o)
    for key, value in real.figures().items():
        error = abs(sim[key] - value) / value if value else (0.0 if sim[key] == 0 else math.inf)
        rows.append((key, value, sim[key], error, TOLERANCE[key]))
    return rows


def table(title: str, rows: list[tuple[str, float, float, float, float]]) -> str:
    out = [title, f"  {'figure':<16}{'real':>12}{'simulated':>12}{'error':>9}{'allowed':>9}"]
    for key, real, sim, error, tol in rows:
        mark = "" if error <= tol else "  <- over"
        out.append(f"  {key:<16}{real:>12.4f}{sim:>12.4f}{error:>8.1%}{tol:>8.0%}{mark}")
    return "\n".join(out)
