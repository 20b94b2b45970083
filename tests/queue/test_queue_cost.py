"""A queue endpoint's workers are billed as a load balancer's are: busy while they hold a job, capped by
cost.max_per_hour, their totals kept at shutdown, on /status, /metrics and the dashboard."""

from __future__ import annotations

import json

import httpx
import pytest

from ..conftest import until

pytestmark = pytest.mark.slow


async def test_sdk_workers_are_billed_busy_while_they_hold_jobs_and_the_spend_limit_caps_scaling(start_queue,
                                                                                                 tmp_path):
    # $0.001/s = $3.60/h a worker: under a $5/h limit one worker runs, a second would make $7.20/h.
    q = await start_queue("sync", workers={"active": 0, "max": 2, "concurrency": 1},
                          scaling={"queue_delay": "500ms"}, cost={"price_per_second": 0.001, "max_per_hour": 5})
    jobs = [await q.run({"input": {"sleep": 2, "n": i}}) for i in range(3)]

    async def capped() -> str | None:
        reason: str | None = (await q.ep.status())["cost"]["capped"]
        return reason
    reason = await until(capped, 30, "scaling to be capped by the spend limit")
    assert "cost.max_per_hour: $5.00/h" in reason and "$3.60/h" in reason
    for job in jobs:  # nothing lost: the one worker runs them all
        assert (await q.wait_state(job, "COMPLETED", "FAILED", timeout=60))["status"] == "COMPLETED"
    status = await q.ep.status()
    assert len({w["id"] for w in status["workers"]}) == 1
    assert "scaling capped: cost.max_per_hour" in q.ep.log()
    cost = status["cost"]
    # Three jobs of 2 s, one after the other on one worker: at least 6 s held, billed busy.
    assert cost["by_phase"]["busy"]["seconds"] >= 5.9, cost
    assert cost["by_phase"]["start"]["seconds"] > 0 and cost["cold_starts"] == 1
    assert cost["total_dollars"] == pytest.approx(cost["total_seconds"] * 0.001, abs=1e-3)
    [worker] = status["workers"]
    assert worker["cost_dollars"] > 0 and worker["billed_seconds"] >= 6

    async with httpx.AsyncClient() as http:
        metrics = (await http.get(q.ep.admin + "/metrics")).text
        assert 'lbproxy_worker_seconds_total{' in metrics and 'phase="busy"' in metrics
        assert (await http.get(q.ep.admin + "/")).status_code == 200  # the dashboard
        assert (await http.get(q.ep.admin + "/api/charts")).status_code == 200
    assert q.ep.terminate() == 0  # stops the worker: its bill is final, then the totals are written
    state = json.loads((tmp_path / "data" / "test.cost.json").read_text())
    billed = sum(row["seconds"] for row in state["totals"]["billed"])
    assert billed >= 6 and billed == int(billed)
