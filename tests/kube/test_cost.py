"""Cost on the kubernetes backend: a pod is billed at its pool's GPU category from its status.startTime, and a
restarted proxy resumes the bill of a pod that outlived it instead of billing its whole life twice."""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import datetime

import pytest

from .kubelet import Kubelet

pytestmark = pytest.mark.slow
NS = "default"


async def test_pods_are_billed_from_their_start_time_at_their_pools_price_and_survive_a_restart(
        serve_k8s, emulator, client):
    async with Kubelet(emulator):
        ep = await serve_k8s(gpu={"categories": ["24gb"]}, workers={"active": 1})
        [w] = await ep.wait_workers(lambda ws: [x["state"] for x in ws] == ["ready"], "the active pod", 30)
        pod = emulator.get("pods", NS, w["id"])
        started = datetime.fromisoformat(pod["status"]["startTime"]).timestamp()
        assert w["started_at"] == started and w["category"] == "24gb" and w["tier"] == "active"
        assert (await client.get(ep.url + "/echo")).status_code == 200
        status = await ep.status()
        assert set(status["cost"]["by_category"]) == {"24gb"}
        assert status["cost"]["rate_dollars_per_hour"] == pytest.approx(0.00013 * 3600)
        ep.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(ep.proc.wait, 20) == 0  # the pod runs on; the bill so far is saved

        again = await serve_k8s(gpu={"categories": ["24gb"]}, workers={"active": 1})
        await again.wait_workers(lambda ws: [x["id"] for x in ws] == [w["id"]] and ws[0]["state"] == "ready",
                                 "the same pod adopted", 30)
        cost = (await again.status())["cost"]
        life = time.time() - started
        # Billed once from its start (the second-resolution startTime), never its whole life twice.
        assert life - 2 <= cost["total_seconds"] <= life + 2, (cost["total_seconds"], life)
        assert cost["cold_starts"] == 1
        metrics = (await client.get(again.admin + "/metrics")).text
        assert 'lbproxy_cost_dollars_total{category="24gb",endpoint="test",tier="active"}' in metrics
