"""A queue endpoint on the kubernetes backend: worker pods pull jobs from the proxy's worker API.

lbproxy serve + the API emulator + the test kubelet, which runs a worker speaking the SDK's protocol
(bench/queue_worker.py) for each pod, with the env the kubelet resolves from the Deployment (the pod name from
the downward API, the key from a Secret), its connections coming from the pod's own loopback IP.
"""

from __future__ import annotations

import base64
import sys
from typing import Any

import httpx
import pytest

from ..conftest import ROOT, free_port, until
from .kubelet import Kubelet

pytestmark = pytest.mark.slow
NS = "default"
KEY = "test-worker-key-0123456789"
LEAN_WORKER = [sys.executable, str(ROOT / "bench" / "queue_worker.py")]
PROXY_LABELS = {"app.kubernetes.io/name": "lbproxy", "app.kubernetes.io/instance": "test"}
SELECTOR = "app.kubernetes.io/name=lbproxy,app.kubernetes.io/instance=test"


def _queue(tmp_path: Any, port: int) -> dict[str, Any]:
    """A queue endpoint whose worker pods reach the worker API at 127.0.0.1:``port`` (SQLite in ``tmp_path``)."""
    return {"type": "queue",
            "workers": {"active": 0, "max": 2}, "timeouts": {"idle": "2s"},
            "queue": {"store": f"sqlite:///{tmp_path}/jobs.db", "worker_listen": f"127.0.0.1:{port}",
                      "worker_url": f"http://127.0.0.1:{port}", "worker_key_secret": "test-worker-key",
                      "ping_interval": "1s", "lease": "4s", "take_hold": "5s", "stop_grace": "3s"}}


def _secret(emulator: Any) -> None:
    emulator.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "test-worker-key", "namespace": NS},
                     "data": {"worker-key": base64.b64encode(KEY.encode()).decode()}})


async def test_queued_jobs_scale_the_deployment_from_zero_and_idle_workers_back_to_zero(
        serve_k8s, emulator, tmp_path, client):
    _secret(emulator)
    port = free_port()
    ep = await serve_k8s(env={"LBPROXY_WORKER_KEY": KEY}, **_queue(tmp_path, port))
    dep = emulator.get("deployments", NS, "test")
    assert dep["spec"]["replicas"] == 0
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["RUNPOD_AI_API_KEY"] == {"name": "RUNPOD_AI_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "test-worker-key", "key": "worker-key"}}}
    assert KEY not in str(dep)  # never a plain value in the Deployment
    assert env["RUNPOD_POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["RUNPOD_WEBHOOK_GET_JOB"]["value"] == f"http://127.0.0.1:{port}/v2/test/job-take/$(RUNPOD_POD_ID)?"
    assert "readinessProbe" not in container  # an SDK worker serves no /ping
    base = f"{ep.url}/v2/test"
    async with Kubelet(emulator, command=LEAN_WORKER) as kubelet:
        ids = [(await client.post(f"{base}/run", json={"input": {"n": i}})).json()["id"] for i in range(5)]

        async def completed() -> list[dict[str, Any]] | None:
            states = [(await client.get(f"{base}/status/{j}")).json() for j in ids]
            return states if all(s["status"] == "COMPLETED" for s in states) else None
        done = await until(completed, 60, "the queued jobs done by a worker pod", interval=0.2)
        assert {s["workerId"] for s in done} <= set(kubelet.started) and kubelet.started
        assert emulator.get("deployments", NS, "test")["spec"]["replicas"] >= 1
        # Idle for timeouts.idle: back to zero replicas, and the pods go.
        await until(lambda: emulator.get("deployments", NS, "test")["spec"]["replicas"] == 0, 30, "scale to zero")
        await until(lambda: not emulator.pods(NS, "lbproxy.io/endpoint"), 30, "the worker pods deleted")


async def test_a_pod_cannot_act_as_another_pod_even_with_the_shared_key(serve_k8s, emulator, tmp_path, client):
    _secret(emulator)
    port = free_port()
    ep = await serve_k8s(env={"LBPROXY_WORKER_KEY": KEY}, **_queue(tmp_path, port) | {
        "workers": {"active": 1, "max": 1}})
    async with Kubelet(emulator, command=LEAN_WORKER) as kubelet:
        await until(lambda: kubelet.started, 30, "the active worker pod")
        (pod,) = kubelet.started
        await ep.wait_workers(lambda ws: [w["state"] for w in ws] == ["ready"], "the pod in touch", 30)
        take = f"http://127.0.0.1:{port}/v2/test/job-take/{pod}?job_in_progress=0"
        # The right key from another address (another pod's IP): refused; a wrong key from the pod's: refused.
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address="127.0.0.250")) as other:
            r = await other.get(take, headers={"Authorization": KEY})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        own_ip = kubelet.ips[pod]
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address=own_ip)) as same:
            r = await same.get(take, headers={"Authorization": "not-the-key"})
        assert r.status_code == 401
        assert "refused GET" in ep.log()


async def test_two_replicas_on_postgresql_scale_one_deployment_for_jobs_submitted_to_either_and_back(
        serve_k8s, emulator, pg_url, client):
    """As the chart runs them: two proxy pods on one database, the worker pods in touch with one of them (the
    worker-API Service keeps a pod on one replica), and that one not the leader: the Lease holder, which never
    hears from the pods itself, scales the Deployment from zero for jobs submitted to either, and back."""
    _secret(emulator)
    port, admin_port = free_port(), free_port()
    eps = []
    for name, ip in (("proxy-a", "127.0.0.2"), ("proxy-b", "127.0.0.3")):
        emulator.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS,
                         "labels": PROXY_LABELS}, "spec": {"containers": [{"name": "lbproxy", "image": "lbproxy"}]}})
        emulator.set_pod_running(NS, name, ip=ip)
        cfg = _queue(tmp_path=None, port=port)
        cfg["queue"] |= {"store": pg_url, "worker_listen": f"{ip}:{port}", "worker_url": f"http://127.0.0.3:{port}"}
        eps.append(await serve_k8s(env={"LBPROXY_WORKER_KEY": KEY, "POD_NAME": name, "POD_IP": ip},
                                   admin=f"{ip}:{admin_port}", backend={"proxy_selector": SELECTOR}, **cfg))
        if name == "proxy-a":  # a leads before b exists; the pods will talk to b only
            await until(lambda: _leading(eps[0]), 20, "proxy-a leading")
    assert emulator.get("deployments", NS, "test")["spec"]["replicas"] == 0
    bases = [f"{ep.url}/v2/test" for ep in eps]
    async with Kubelet(emulator, command=LEAN_WORKER) as kubelet:
        ids = [(await client.post(f"{bases[i % 2]}/run", json={"input": {"n": i}})).json()["id"] for i in range(6)]

        async def completed() -> list[dict[str, Any]] | None:  # read from the replica each was not sent to
            states = [(await client.get(f"{bases[(i + 1) % 2]}/status/{j}")).json() for i, j in enumerate(ids)]
            return states if all(s["status"] == "COMPLETED" for s in states) else None
        done = await until(completed, 60, "the jobs done by worker pods", interval=0.2)
        assert {s["workerId"] for s in done} <= set(kubelet.started) and kubelet.started
        assert [w["state"] for w in await eps[0].workers()] == ["starting"] * len(await eps[0].workers())
        await until(lambda: emulator.get("deployments", NS, "test")["spec"]["replicas"] == 0, 30, "scale to zero")
        await until(lambda: not emulator.pods(NS, "lbproxy.io/endpoint"), 30, "the worker pods deleted")
    assert await _leading(eps[0]) and not await _leading(eps[1])
    assert "not ready within timeouts.init" not in eps[0].log()
    health = [(await client.get(f"{base}/health")).json()["jobs"] for base in bases]
    assert health[0] == health[1] and health[0]["completed"] == 6 and health[0]["retried"] == 0


async def _leading(ep: Any) -> bool:
    return bool((await ep.status())["leading"])
