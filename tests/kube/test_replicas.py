"""Several proxy replicas against one endpoint: one leader scales with everyone's load; all route.

Two real ``lbproxy serve`` processes play two proxy pods (their admin ports on 127.0.0.2 and 127.0.0.3, as on
two pod IPs); the emulator holds their pod objects so the leader finds its peers by label, as in a cluster.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
import pytest

from ..conftest import Endpoint, free_port, until
from .kubelet import Kubelet

pytestmark = pytest.mark.slow
NS = "default"
PROXY_LABELS = {"app.kubernetes.io/name": "lbproxy", "app.kubernetes.io/instance": "test"}
SELECTOR = "app.kubernetes.io/name=lbproxy,app.kubernetes.io/instance=test"


async def _leading(ep: Endpoint) -> bool:
    try:
        return bool((await ep.status())["leading"])
    except httpx.TransportError:
        return False


async def two_replicas(serve_k8s: Any, emulator: Any, **overrides: Any) -> tuple[Endpoint, Endpoint]:
    admin_port = free_port()
    eps = []
    for name, ip in (("proxy-a", "127.0.0.2"), ("proxy-b", "127.0.0.3")):
        emulator.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS,
                         "labels": PROXY_LABELS}, "spec": {"containers": [{"name": "lbproxy", "image": "lbproxy"}]}})
        emulator.set_pod_running(NS, name, ip=ip)
        eps.append(await serve_k8s(
            env={"POD_NAME": name, "POD_IP": ip}, admin=f"{ip}:{admin_port}",
            backend={"proxy_selector": SELECTOR}, **overrides))
    return eps[0], eps[1]


async def test_one_leader_scales_for_a_request_queued_on_the_follower(serve_k8s, emulator, client):
    async with Kubelet(emulator):
        a, b = await two_replicas(serve_k8s, emulator, timeouts={"idle": "60s"})
        await until(lambda: _one_leader(a, b), 15, "exactly one leader")
        leader, follower = (a, b) if await _leading(a) else (b, a)
        # The follower has a queued request and no worker; only the leader may scale, from the follower's load.
        r = await client.get(follower.url + "/echo")
        assert r.status_code == 200
        assert "scale up" in leader.log() and "scale up" not in follower.log()
        assert [w["id"] for w in await follower.workers()] == [w["id"] for w in await leader.workers()]


async def _one_leader(a: Endpoint, b: Endpoint) -> bool:
    return [await _leading(a), await _leading(b)].count(True) == 1


async def test_a_worker_busy_on_the_follower_is_not_drained(serve_k8s, emulator, client):
    async with Kubelet(emulator):
        a, b = await two_replicas(serve_k8s, emulator, timeouts={"idle": "1s"})
        await until(lambda: _one_leader(a, b), 15, "exactly one leader")
        leader, follower = (a, b) if await _leading(a) else (b, a)
        started = time.monotonic()
        r = await client.get(follower.url + "/sleep?s=4")  # idle 1 s on the leader, busy on the follower
        assert r.status_code == 200 and time.monotonic() - started >= 4
        wid = r.headers["x-lbproxy-worker-id"]
        drained_at = leader.log().find(f"scale down: draining worker {wid}")
        # It goes once idle everywhere, announced to the follower, and then its pod is removed.
        await until(lambda: f"scale down: draining worker {wid}" in leader.log(), 20, "the drain")
        await until(lambda: wid not in {p["metadata"]["name"] for p in emulator.pods(NS, None)}, 20, "the pod to go")
        assert drained_at == -1, "the worker was drained while the follower still had a request on it"
        assert "is being drained by the leader" in follower.log()


async def test_the_other_replica_takes_over_when_the_leader_dies_or_stops(serve_k8s, emulator):
    async with Kubelet(emulator):
        a, b = await two_replicas(serve_k8s, emulator)
        await until(lambda: _one_leader(a, b), 15, "exactly one leader")
        leader, follower = (a, b) if await _leading(a) else (b, a)
        leader.proc.send_signal(signal.SIGKILL)  # no chance to release the lease: it must expire
        started = time.monotonic()
        await until(lambda: _leading(follower), 15, "the follower to take over")
        assert time.monotonic() - started < 12
        # A graceful stop releases the lease at once (a third replica takes over without waiting for expiry).
        c = await serve_k8s(env={"POD_NAME": "proxy-c", "POD_IP": "127.0.0.4"},
                            admin=f"127.0.0.4:{follower.config['admin'].rsplit(':', 1)[1]}",
                            backend={"proxy_selector": SELECTOR})
        follower.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        await until(lambda: _leading(c), 10, "the third replica to take over")
        assert time.monotonic() - started < 4, "a released lease must not wait for its expiry"
        await asyncio.to_thread(follower.proc.wait, 20)
