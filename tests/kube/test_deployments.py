"""The emulated deployment controller through the real client: pods from the template, the scale subresource,
scale-down victims picked as the ReplicaSet controller picks them, status, garbage collection. The ranking itself
is also tested as the pure function it is."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException

from .controller import DELETION_COST, pods_to_delete
from .emulator import KubeEmulator
from .registry import rfc3339


def deployment(name: str = "web", replicas: int = 2, image: str = "worker:1") -> dict[str, Any]:
    return {"metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name, "gpu": "a100"}},
                                  "spec": {"containers": [{"name": "main", "image": image}]}}}}


def names(pods: list[dict[str, Any]]) -> list[str]:
    return sorted(p["metadata"]["name"] for p in pods)


def active(emulator: KubeEmulator, selector: str = "app=web") -> list[dict[str, Any]]:
    return [p for p in emulator.pods("default", selector) if not p["metadata"].get("deletionTimestamp")]


async def scaled(emulator: KubeEmulator, count: int) -> list[dict[str, Any]]:
    """Wait until the deployment has ``count`` active (not terminating) pods; return them."""
    def check() -> tuple[list[dict[str, Any]]] | None:
        pods = active(emulator)
        return (pods,) if len(pods) == count else None  # a tuple: no pods is an answer too
    result: tuple[list[dict[str, Any]]] = await emulator.wait_for(check, 5, f"{count} pods")
    return result[0]


async def running(emulator: KubeEmulator, count: int) -> list[dict[str, Any]]:
    """Scheduler and kubelet: every pod of the deployment runs and is ready, one per node."""
    pods = await scaled(emulator, count)
    for i, p in enumerate(sorted(pods, key=lambda p: p["metadata"]["name"])):
        emulator.set_pod_running("default", p["metadata"]["name"], f"10.1.0.{i + 1}", node=f"node-{i + 1}")
    return active(emulator)


async def test_deployment_creates_pods_from_its_template(emulator: KubeEmulator, apps: client.AppsV1Api) -> None:
    created = await apps.create_namespaced_deployment("default", deployment())
    pods = await scaled(emulator, 2)
    sets = emulator.objects("replicasets", "default")
    assert len(sets) == 1
    rs = sets[0]
    pod_hash = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs["metadata"]["name"] == f"web-{pod_hash}"
    assert rs["metadata"]["ownerReferences"][0]["uid"] == created.metadata.uid
    for p in pods:
        assert re.fullmatch(rf"web-{pod_hash}-[bcdfghjklmnpqrstvwxz2456789]{{5}}", p["metadata"]["name"])
        assert p["metadata"]["labels"] == {"app": "web", "gpu": "a100", "pod-template-hash": pod_hash}
        owner = p["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("ReplicaSet", rs["metadata"]["name"], True)
        assert p["spec"]["containers"][0]["image"] == "worker:1"
        assert p["status"] == {"phase": "Pending"} and "nodeName" not in p["spec"]


async def test_scale_subresource_changes_the_pods(emulator: KubeEmulator, apps: client.AppsV1Api) -> None:
    await apps.create_namespaced_deployment("default", deployment(replicas=1))
    await scaled(emulator, 1)
    scale = await apps.read_namespaced_deployment_scale("web", "default")
    assert scale.spec.replicas == 1 and scale.status.selector == "app=web"
    scale.spec.replicas = 3
    await apps.replace_namespaced_deployment_scale("web", "default", scale)
    await scaled(emulator, 3)
    with pytest.raises(ApiException) as e:  # the Scale still carries the old resourceVersion
        await apps.replace_namespaced_deployment_scale("web", "default", scale)
    assert e.value.status == 409
    await apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 0}})
    await scaled(emulator, 0)
    assert emulator.pods() == []  # unscheduled pods have nothing to stop: deleted at once
    scale = await apps.read_namespaced_deployment_scale("web", "default")
    assert (scale.spec.replicas, scale.status.replicas) == (0, 0)


async def test_scale_down_deletes_the_pod_with_the_lowest_deletion_cost(emulator: KubeEmulator,
                                                                        apps: client.AppsV1Api,
                                                                        core: client.CoreV1Api) -> None:
    await apps.create_namespaced_deployment("default", deployment(replicas=3))
    pods = await running(emulator, 3)
    costs = {pods[0]["metadata"]["name"]: "10", pods[1]["metadata"]["name"]: "-5", pods[2]["metadata"]["name"]: "0"}
    for name, cost in costs.items():
        await core.patch_namespaced_pod(name, "default", {"metadata": {"annotations": {DELETION_COST: cost}}})
    await apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 2}})
    victim = pods[1]["metadata"]["name"]
    terminating = await emulator.wait_for(
        lambda: [p for p in emulator.pods() if p["metadata"].get("deletionTimestamp")], 5, "a terminating pod")
    assert names(terminating) == [victim]
    assert terminating[0]["metadata"]["deletionGracePeriodSeconds"] == 30
    emulator.finish_deletion("default", victim)
    assert names(emulator.pods()) == sorted(set(costs) - {victim})


async def test_scale_down_prefers_unscheduled_then_not_ready_pods(emulator: KubeEmulator,
                                                                  apps: client.AppsV1Api,
                                                                  core: client.CoreV1Api) -> None:
    await apps.create_namespaced_deployment("default", deployment(replicas=4))
    pods = sorted(p["metadata"]["name"] for p in await scaled(emulator, 4))
    unscheduled, not_ready, cheap, dear = pods
    emulator.set_pod_unschedulable("default", unscheduled, "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    emulator.set_pod_running("default", not_ready, "10.1.0.2", ready=False, node="node-1")
    emulator.set_pod_running("default", cheap, "10.1.0.3", node="node-2")
    emulator.set_pod_running("default", dear, "10.1.0.4", node="node-3")
    # The deletion cost only orders pods that tie on scheduling, phase and readiness.
    for name, cost in ((unscheduled, "1000"), (not_ready, "1000"), (cheap, "-1"), (dear, "5")):
        await core.patch_namespaced_pod(name, "default", {"metadata": {"annotations": {DELETION_COST: cost}}})
    expected_order = [unscheduled, not_ready, cheap]
    for replicas, victim in zip((3, 2, 1), expected_order, strict=True):
        await apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": replicas}})
        await scaled(emulator, replicas)
        assert victim not in names(active(emulator))
    assert names(active(emulator)) == [dear]


async def test_deployment_status_counts_ready_pods(emulator: KubeEmulator, apps: client.AppsV1Api) -> None:
    await apps.create_namespaced_deployment("default", deployment(replicas=2))
    await running(emulator, 2)

    async def status() -> Any:
        return (await apps.read_namespaced_deployment_status("web", "default")).status

    await emulator.wait_for(lambda: (emulator.get("deployments", "default", "web") or {}).get("status", {}).get(
        "readyReplicas") == 2, 5, "two ready replicas")
    s = await status()
    assert (s.replicas, s.ready_replicas, s.available_replicas, s.updated_replicas) == (2, 2, 2, 2)
    assert s.observed_generation == 1 and s.unavailable_replicas is None  # zero counts are omitted
    emulator.set_pod_ready("default", active(emulator)[0]["metadata"]["name"], False)
    await emulator.wait_for(lambda: emulator.get("deployments", "default", "web")["status"].get(  # type: ignore[index]
        "readyReplicas") == 1, 5, "one ready replica")
    assert (await status()).unavailable_replicas == 1


async def test_failed_pod_is_replaced(emulator: KubeEmulator, apps: client.AppsV1Api) -> None:
    await apps.create_namespaced_deployment("default", deployment(replicas=1))
    (first,) = await running(emulator, 1)
    emulator.set_pod_phase("default", first["metadata"]["name"], "Failed", reason="Evicted")
    replacement = await emulator.wait_for(
        lambda: [p for p in active(emulator) if p["metadata"]["name"] != first["metadata"]["name"]], 5, "a new pod")
    assert len(replacement) == 1 and len(emulator.pods()) == 2  # the failed pod stays until someone deletes it


async def test_new_pods_use_a_changed_template_without_a_rollout(emulator: KubeEmulator,
                                                                 apps: client.AppsV1Api) -> None:
    await apps.create_namespaced_deployment("default", deployment(replicas=1))
    (old,) = await scaled(emulator, 1)
    patched = await apps.patch_namespaced_deployment("web", "default", {"spec": {"template": {"spec": {
        "containers": [{"name": "main", "image": "worker:2"}]}}}})
    assert patched.metadata.generation == 2
    await apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 2}})
    pods = await scaled(emulator, 2)
    images = {p["metadata"]["name"]: p["spec"]["containers"][0]["image"] for p in pods}
    assert images.pop(old["metadata"]["name"]) == "worker:1" and list(images.values()) == ["worker:2"]
    assert len(emulator.objects("replicasets", "default")) == 2
    d = await emulator.wait_for(lambda: (lambda d: d if d["status"].get("updatedReplicas") == 1 else None)(
        emulator.get("deployments", "default", "web")), 5, "status of the new template")
    assert d["status"]["replicas"] == 2 and d["status"]["observedGeneration"] == 3  # scaling is a spec change


async def test_deleting_the_deployment_collects_its_pods(emulator: KubeEmulator, apps: client.AppsV1Api) -> None:
    await apps.create_namespaced_deployment("default", deployment(replicas=2))
    await running(emulator, 2)
    await apps.delete_namespaced_deployment("web", "default")
    await emulator.wait_for(lambda: len(active(emulator)) == 0, 5, "the pods to terminate")
    assert emulator.objects("replicasets", "default") == []
    for p in emulator.pods():
        emulator.finish_deletion("default", p["metadata"]["name"])
    assert emulator.pods() == []


async def test_invalid_deployment_is_422(apps: client.AppsV1Api) -> None:
    body = deployment()
    body["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    with pytest.raises(ApiException) as e:
        await apps.create_namespaced_deployment("default", body)
    assert e.value.status == 422 and "`selector` does not match template `labels`" in e.value.body


async def test_replica_sets_are_read_only(emulator: KubeEmulator, apps: client.AppsV1Api) -> None:
    await apps.create_namespaced_deployment("default", deployment(replicas=1))
    await scaled(emulator, 1)
    (rs,) = (await apps.list_namespaced_replica_set("default")).items
    with pytest.raises(ApiException) as e:
        await apps.delete_namespaced_replica_set(rs.metadata.name, "default")
    assert e.value.status == 405


# --- the ranking, as a pure function --------------------------------------------------------------------------

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def ranked_pod(name: str, uid: str, age: float, node: str = "n1", phase: str = "Running", ready: bool = True,
               cost: int | None = None, restarts: int = 0) -> dict[str, Any]:
    created = rfc3339(NOW - timedelta(seconds=age))
    conditions = [{"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": created}]
    return {"metadata": {"name": name, "uid": uid, "creationTimestamp": created,
                         "annotations": {DELETION_COST: str(cost)} if cost is not None else {}},
            "spec": {"nodeName": node} if node else {},
            "status": {"phase": phase, "conditions": conditions,
                       "containerStatuses": [{"name": "main", "restartCount": restarts}]}}


def victims(pods: list[dict[str, Any]], count: int = 1) -> list[str]:
    return [p["metadata"]["name"] for p in pods_to_delete(pods, pods, count, NOW)]


def test_ranking_unassigned_pending_not_ready_then_cost() -> None:
    pods = [ranked_pod("ready", "1", 100), ranked_pod("not-ready", "2", 100, ready=False),
            ranked_pod("pending", "3", 100, phase="Pending", ready=False),
            ranked_pod("unassigned", "4", 100, node="", phase="Pending", ready=False, cost=99)]
    assert victims(pods, 4) == ["unassigned", "pending", "not-ready", "ready"]
    costly = [ranked_pod("a", "1", 100, node="n1", cost=5), ranked_pod("b", "2", 100, node="n2", cost=-5)]
    assert victims(costly) == ["b"]


def test_ranking_prefers_pods_doubled_up_on_a_node() -> None:
    pods = [ranked_pod("alone", "1", 100, node="n1"), ranked_pod("pair-1", "2", 100, node="n2"),
            ranked_pod("pair-2", "3", 100, node="n2")]
    assert victims(pods) in (["pair-1"], ["pair-2"])


def test_ranking_newer_first_across_log2_buckets_uid_within_one() -> None:
    # Ready for ~8 s and ~1000 s: different powers of two, so the more recent one goes first.
    assert victims([ranked_pod("old", "1", 1000), ranked_pod("new", "2", 8)]) == ["new"]
    # Ready for 70 s and 100 s: the same bucket (2^36..2^37 ns), so the lower UID goes first, not the newer pod.
    assert victims([ranked_pod("older", "a", 100), ranked_pod("newer", "b", 70)]) == ["older"]


def test_ranking_more_restarts_first_when_all_else_ties() -> None:
    pods = [ranked_pod("calm", "1", 100, node="n1"), ranked_pod("flaky", "2", 100, node="n2", restarts=3)]
    assert victims(pods) == ["flaky"]
