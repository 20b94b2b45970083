"""The kubernetes backend end to end: lbproxy serve + the Kubernetes API emulator + a test kubelet.

lbproxy talks to the emulator with the official client over HTTP; the test kubelet starts a real echo
worker per pod on its own loopback address, so requests really travel proxy -> pod IP -> worker.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import httpx
import pytest

from ..conftest import Endpoint, until
from .kubelet import Kubelet

pytestmark = pytest.mark.slow
NS = "default"


def deployment(emulator: Any, name: str) -> dict[str, Any]:
    doc: dict[str, Any] = emulator.get("deployments", NS, name)
    return doc


async def test_scale_from_zero_creates_the_gpu_deployment_and_serves(serve_k8s, emulator, client):
    ep = await serve_k8s(gpu={"categories": ["80gb-pro"]}, workers={"gpus": 2})
    dep = deployment(emulator, "test-80gb-pro")
    pod_spec = dep["spec"]["template"]["spec"]
    assert pod_spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert dep["spec"]["replicas"] == 0
    async with Kubelet(emulator):
        r = await client.get(ep.url + "/echo/hi")
    assert r.status_code == 200
    pod_name = r.headers["x-lbproxy-worker-id"]
    assert pod_name.startswith("test-80gb-pro-")
    assert r.json()["worker"] == pod_name
    assert deployment(emulator, "test-80gb-pro")["spec"]["replicas"] == 1
    assert ("PATCH", f"/apis/apps/v1/namespaces/{NS}/deployments/test-80gb-pro/scale") in emulator.requests


async def test_restart_keeps_replicas_and_does_not_rewrite_an_unchanged_deployment(serve_k8s, emulator, client):
    async with Kubelet(emulator):
        ep = await serve_k8s(workers={"active": 1})
        await ep.wait_workers(lambda ws: [w["state"] for w in ws] == ["ready"], "the active worker")
        ep.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(ep.proc.wait, 20) == 0
        assert deployment(emulator, "test")["spec"]["replicas"] == 1  # workers outlive the proxy
        puts = [r for r in emulator.requests if r[0] == "PUT" and "/deployments/" in r[1]]
        ep2 = await serve_k8s(listen=ep.config["listen"], admin=ep.config["admin"], workers={"active": 1})
        ws = await ep2.wait_workers(lambda ws: [w["state"] for w in ws] == ["ready"], "the same worker adopted")
        assert deployment(emulator, "test")["spec"]["replicas"] == 1
        assert [r for r in emulator.requests if r[0] == "PUT" and "/deployments/" in r[1]] == puts
        assert (await client.get(ep2.url + "/echo")).headers["x-lbproxy-worker-id"] == ws[0]["id"]


async def test_idle_scale_down_drains_and_removes_the_chosen_pod(serve_k8s, emulator, client):
    async with Kubelet(emulator) as kubelet:
        ep = await serve_k8s(workers={"active": 1, "max": 2, "concurrency": 1},
                             scaling={"queue_delay": "0s"}, timeouts={"idle": "1s"})
        await ep.wait_workers(lambda ws: len(ws) == 1 and ws[0]["state"] == "ready", "the active worker")
        rs = await asyncio.gather(*(client.get(ep.url + "/sleep?s=0.5") for _ in range(4)))
        assert [r.status_code for r in rs] == [200] * 4
        assert len({r.headers["x-lbproxy-worker-id"] for r in rs}) == 2
        ws = await ep.wait_workers(lambda ws: len(ws) == 1, "scale-down to workers.active", timeout=30)
        [victim] = set(kubelet.started) - {ws[0]["id"]}
        await until(lambda: victim not in {p["metadata"]["name"] for p in emulator.pods(NS, None)}, 15,
                    "the victim pod to be deleted")
        assert deployment(emulator, "test")["spec"]["replicas"] == 1
        cost_patches = [r for r in emulator.requests if r[0] == "PATCH" and r[1].endswith(f"/pods/{victim}")]
        assert cost_patches, "the victim must be marked with a low pod-deletion-cost before replicas go down"
        assert "ReplicaSet stopped pod" not in ep.log()


async def test_gpu_fallback_to_the_next_category_and_back(serve_k8s, emulator, client):
    async with Kubelet(emulator) as kubelet:
        kubelet.full_pools.add("80gb-pro")
        ep = await serve_k8s(gpu={"categories": ["80gb-pro", "80gb"]}, timeouts={"idle": "1s", "wait": "30s"},
                             backend={"fallback_after": "1s", "fallback_retry": "3s"})
        r = await client.get(ep.url + "/echo")
        assert r.status_code == 200
        assert r.headers["x-lbproxy-worker-id"].startswith("test-80gb-"), r.headers
        assert not r.headers["x-lbproxy-worker-id"].startswith("test-80gb-pro-")
        assert deployment(emulator, "test-80gb-pro")["spec"]["replicas"] == 0
        assert "GPU fallback" in ep.log()
        # H100s free up; the A100 worker goes idle and away; once the block ends, new workers try H100 again.
        kubelet.full_pools.clear()
        await ep.wait_workers(lambda ws: ws == [], "idle scale-down", timeout=30)

        async def h100_unblocked() -> bool:
            pools = (await ep.status())["backend"]["pools"]
            return next(p for p in pools if p["gpu_category"] == "80gb-pro")["blocked_for_seconds"] == 0

        await until(h100_unblocked, 10, "the 80gb-pro block to end")
        r = await client.get(ep.url + "/echo")
        assert r.status_code == 200 and r.headers["x-lbproxy-worker-id"].startswith("test-80gb-pro-")


async def _burst_uses_two_workers(ep: Endpoint, client: httpx.AsyncClient) -> None:
    """Two concurrent requests with concurrency 1 need a second worker: a scale-up seen through the watch.

    Each takes longer than a pod start here, so the second request cannot wait for the first worker.
    """
    rs = await asyncio.gather(*(client.get(ep.url + "/sleep?s=3") for _ in range(2)))
    assert [r.status_code for r in rs] == [200, 200]
    assert len({r.headers["x-lbproxy-worker-id"] for r in rs}) == 2


async def test_watch_resumes_after_410_gone(serve_k8s, emulator, client):
    async with Kubelet(emulator):
        ep = await serve_k8s(workers={"max": 2, "concurrency": 1}, scaling={"queue_delay": "0s"},
                             timeouts={"idle": "60s"})
        assert (await client.get(ep.url + "/echo")).status_code == 200
        emulator.compact()
        emulator.drop_watches(abrupt=False)  # a clean end, as at the server's timeout: lbproxy resumes ...
        await until(lambda: "410 Gone" in ep.log(), 15, "the watch to hit 410 and re-list")
        await _burst_uses_two_workers(ep, client)  # the new pod was seen after the re-list


async def test_api_outage_keeps_routing_and_recovers(serve_k8s, emulator, client):
    async with Kubelet(emulator):
        ep = await serve_k8s(workers={"active": 1, "max": 2, "concurrency": 1}, scaling={"queue_delay": "0s"},
                             timeouts={"idle": "60s"})
        ws = await ep.wait_workers(lambda ws: len(ws) == 1 and ws[0]["state"] == "ready", "the active worker")
        port = emulator.port
        await emulator.stop()
        for _ in range(5):
            r = await client.get(ep.url + "/echo")
            assert r.status_code == 200 and r.headers["x-lbproxy-worker-id"] == ws[0]["id"]
        await until(lambda: "Kubernetes API unreachable" in ep.log(), 20, "lbproxy to notice the outage")
        assert (await ep.status())["backend"]["api_reachable"] is False
        await emulator.start(port)
        # No restart: the watch reconnects and scaling works again.
        await until(lambda: _api_reachable(ep), 40, "lbproxy to reach the API again")
        await _burst_uses_two_workers(ep, client)


async def _api_reachable(ep: Endpoint) -> bool:
    return bool((await ep.status())["backend"]["api_reachable"])


async def test_when_the_replicaset_removes_another_pod_the_drained_worker_serves_again(serve_k8s, emulator, client):
    async with Kubelet(emulator) as kubelet:
        ep = await serve_k8s(workers={"max": 2, "concurrency": 1}, scaling={"queue_delay": "0s"},
                             timeouts={"idle": "1s"})
        [first] = await _serve_once(ep, client)
        kubelet.full_pools.add("any")  # the next pod stays Pending/Unschedulable
        rs = await asyncio.gather(*(client.get(ep.url + "/sleep?s=0.5") for _ in range(2)))
        assert {r.headers["x-lbproxy-worker-id"] for r in rs} == {first}
        # The idle ready worker is the victim, but the ReplicaSet removes the unscheduled pod first.
        await until(lambda: "instead of " + first in ep.log(), 20, "the ReplicaSet to pick the pending pod")
        # Back in rotation (once its drain mark is taken back), its pod untouched.
        await ep.wait_workers(lambda ws: [(w["id"], w["state"]) for w in ws] == [(first, "ready")],
                              "only the kept worker, ready", 10)
        assert emulator.get("pods", NS, first)["metadata"].get("deletionTimestamp") is None


async def _serve_once(ep: Endpoint, client: httpx.AsyncClient) -> list[str]:
    r = await client.get(ep.url + "/echo")
    assert r.status_code == 200
    return [r.headers["x-lbproxy-worker-id"]]
