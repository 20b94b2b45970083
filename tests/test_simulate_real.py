"""The simulator agrees with a real run: ``lbproxy serve`` with the echo worker replaying a shortened ``bursty``
and ``sparse`` trace, its figures read from lbproxy itself, within 10% on worker-seconds, cost and p50 wait and
20% on p99 wait (bench/sim_vs_real.py says how the comparison is kept robust on a loaded machine;
bench/simulate.py runs longer traces).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Any

import pytest

from lbproxy.simulate.traces import synthetic

from .conftest import ROOT, base_config, until

sys.path.append(str(ROOT / "bench"))  # appended: its modules must not shadow others
import sim_vs_real

pytestmark = pytest.mark.slow


@pytest.mark.timeout(150)
async def test_simulator_agrees_with_real_runs_of_bursty_and_sparse(start_endpoint: Callable[..., Any],
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # The two runs at once, on two endpoints: half the wall time, and the figures are each run's own.
    results = await asyncio.gather(*(run_and_compare(name, start_endpoint) for name in ("bursty", "sparse")))
    failures = []
    for name, real, predicted, rows, nominal in results:
        with capsys.disabled():
            print(f"\n{name}: {len(real.waits)} requests, cold starts {[round(c, 2) for c in real.cold_starts]}, "
                  f"stop times {[round(s, 2) for s in real.stop_times]}")
            print(sim_vs_real.table("the real run vs the simulator on its access log", rows))
            print(sim_vs_real.table("(for information) vs the simulator on the trace as generated", nominal))
        if predicted.cold_starts != len(real.cold_starts):
            failures.append(f"{name}: {predicted.cold_starts} workers started, the real run {len(real.cold_starts)}")
        failures += [f"{name}: {key} real {r:.4f}, simulated {s:.4f}: off by {e:.1%} (at most {tol:.0%})"
                     for key, r, s, e, tol in rows if e > tol]
    assert not failures, "\n".join(failures)


async def run_and_compare(name: str, start_endpoint: Callable[..., Any]) -> tuple[Any, ...]:
    settings = sim_vs_real.endpoint_settings()
    del settings["worker"]["command"]  # the test's base config has the echo worker and cleans up after it
    ep = await start_endpoint(**settings)
    spec = sim_vs_real.TRACES[name]
    statuses = await sim_vs_real.replay(ep.url, synthetic(spec))
    assert set(statuses) == {200}, (name, statuses)
    await ep.wait_workers(lambda ws: not ws, f"{name}: every worker to idle out and stop", timeout=60)
    status = await ep.status()

    async def logged() -> bool:  # the last exit is in /status before its log line is flushed to the file
        return ep.log().count('"logger": "lbproxy.access"') == len(statuses)
    await until(logged, 10, f"{name}: every access line in the log")
    real = sim_vs_real.measure(ep.log(), status)
    assert len(real.waits) == len(statuses) and real.cold_starts and real.stop_times, name

    config = base_config(**settings)
    predicted = sim_vs_real.predict(config, real)
    nominal = sim_vs_real.compare(real, sim_vs_real.predict_nominal(config, spec, real))
    return name, real, predicted, sim_vs_real.compare(real, predicted), nominal
