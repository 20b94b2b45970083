"""Cost end to end: a real `lbproxy serve` with echo workers bills them, caps scaling at cost.max_per_hour,
and keeps its totals across a restart."""

from __future__ import annotations

import asyncio
import json

import pytest

from .conftest import until

pytestmark = pytest.mark.slow


async def test_spend_limit_keeps_the_second_worker_from_starting_and_requests_queue(start_endpoint, client):
    # $0.001/s = $3.60/h a worker: under a $5/h limit one worker runs, a second would make $7.20/h.
    ep = await start_endpoint(workers={"max": 2, "concurrency": 1}, scaling={"queue_delay": "500ms"},
                              cost={"price_per_second": 0.001, "max_per_hour": 5})
    first = asyncio.create_task(client.get(ep.url + "/sleep?s=3"))
    await ep.wait_workers(lambda ws: any(w["in_flight"] == 1 for w in ws), "the first request on a worker")
    second = asyncio.create_task(client.get(ep.url + "/echo"))

    async def capped() -> str | None:
        reason: str | None = (await ep.status())["cost"]["capped"]
        return reason
    reason = await until(capped, 20, "scaling to be capped by the spend limit")
    assert "cost.max_per_hour: $5.00/h" in reason and "$3.60/h" in reason
    metrics = (await client.get(ep.admin + "/metrics")).text
    assert 'lbproxy_scaling_capped{endpoint="test"} 1.0' in metrics
    status = await ep.status()
    assert len(status["workers"]) == 1 and status["queue"]["length"] == 1
    assert any(d["reason"] == reason for d in status["last_decisions"])
    assert status["cost"]["rate_dollars_per_hour"] == pytest.approx(3.6)

    assert (await first).status_code == 200
    assert (await second).status_code == 200  # served by the one worker once it was free: nothing lost
    assert "scaling capped: cost.max_per_hour" in ep.log()
    await until(lambda: _not_capped(ep), 20, "the cap to lift once nothing waits")
    assert len({w["id"] for w in (await ep.status())["workers"]}) == 1


async def _not_capped(ep) -> bool:
    return (await ep.status())["cost"]["capped"] is None


async def test_cost_totals_survive_a_restart(start_endpoint, client, tmp_path):
    ep = await start_endpoint(cost={"category": "24gb"}, timeouts={"idle": "1s"})
    assert (await client.get(ep.url + "/echo")).status_code == 200
    [w] = await ep.wait_workers(lambda ws: len(ws) == 1 and ws[0]["billed_seconds"] >= 1, "a billed worker")
    assert w["category"] == "24gb" and w["tier"] == "flex" and w["cost_dollars"] > 0
    assert ep.terminate() == 0  # stops the worker: its bill is final, then the totals are written
    state = json.loads((tmp_path / "data" / "test.cost.json").read_text())
    billed = sum(row["seconds"] for row in state["totals"]["billed"])
    assert billed >= 1 and billed == int(billed)  # every worker stopped: whole seconds

    again = await start_endpoint(cost={"category": "24gb"})
    cost = (await again.status())["cost"]
    assert cost["since"] == pytest.approx(state["since"], abs=0.01)
    assert cost["total_seconds"] == pytest.approx(billed) and cost["cold_starts"] == 1
    assert cost["total_dollars"] == pytest.approx(billed * 0.00019, abs=1e-6)
    metrics = (await client.get(again.admin + "/metrics")).text
    seconds = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("lbproxy_worker_seconds_total{"))
    assert seconds == pytest.approx(billed)
    assert 'lbproxy_cold_starts_total{endpoint="test"} 1.0' in metrics


async def test_a_request_the_spend_limit_left_waiting_gets_a_503_naming_the_limit(start_endpoint, client):
    ep = await start_endpoint(workers={"max": 2, "concurrency": 1}, scaling={"queue_delay": "0s"},
                              timeouts={"wait": "2s"}, cost={"price_per_second": 0.001, "max_per_hour": 5})
    first = asyncio.create_task(client.get(ep.url + "/sleep?s=4"))
    await ep.wait_workers(lambda ws: any(w["in_flight"] == 1 for w in ws), "the first request on a worker")
    r = await client.get(ep.url + "/echo")
    assert r.status_code == 503 and r.json()["error"] == "no_worker"
    assert "scaling is capped: cost.max_per_hour: $5.00/h" in r.json()["message"], r.json()
    assert int(r.headers["retry-after"]) >= 1
    assert (await first).status_code == 200
