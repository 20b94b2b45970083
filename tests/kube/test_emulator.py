"""The emulated API server, driven by the real ``kubernetes.aio`` client: CRUD and its errors, selectors, patches,
graceful deletion, watches (history, 410 after compaction, dropped streams), an outage, leader election."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pydantic
import pytest
from kubernetes.aio import client
from kubernetes.aio.client.exceptions import ApiException
from kubernetes.aio.leaderelection import electionconfig, leaderelection
from kubernetes.aio.leaderelection.leaderelectionrecord import LeaderElectionRecord
from kubernetes.aio.leaderelection.resourcelock.leaselock import LeaseLock
from kubernetes.aio.watch import Watch

from .conftest import ClientFactory
from .emulator import KubeEmulator


def pod(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [{"name": "main", "image": "worker:1"}], **spec}}


def status_of(e: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(e.body)
    assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == e.status, body
    return body


async def watch_events(func: Any, *args: Any, count: int | None = None, **kwargs: Any) -> list[tuple[str, str]]:
    """(type, name) of the events a watch yields: the first ``count``, or all until the stream ends."""
    out: list[tuple[str, str]] = []
    async with Watch() as w:
        async for event in w.stream(func, *args, **kwargs):
            out.append((event["type"], event["raw_object"]["metadata"].get("name", "")))
            if len(out) == count:
                break
    return out


# --- CRUD --------------------------------------------------------------------------------------------------

async def test_created_pod_has_server_set_metadata_and_reads_back(core: client.CoreV1Api) -> None:
    created = await core.create_namespaced_pod("default", pod("a", {"app": "x"}))
    assert created.metadata.uid and created.metadata.creation_timestamp and created.metadata.generation == 1
    assert created.status.phase == "Pending" and created.spec.node_name is None
    read = await core.read_namespaced_pod("a", "default")
    assert read.metadata.resource_version == created.metadata.resource_version
    assert read.spec.termination_grace_period_seconds == 30  # defaulted by the server


async def test_missing_object_is_404_not_found(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as e:
        await core.read_namespaced_pod("nope", "default")
    assert e.value.status == 404
    assert status_of(e.value)["reason"] == "NotFound"
    assert status_of(e.value)["message"] == 'pods "nope" not found'


async def test_creating_twice_is_409_already_exists(core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod("default", pod("a"))
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_pod("default", pod("a"))
    assert e.value.status == 409 and status_of(e.value)["reason"] == "AlreadyExists"


async def test_generate_name_gets_a_random_suffix(core: client.CoreV1Api) -> None:
    body = pod("")
    body["metadata"] = {"generateName": "worker-"}
    names = {(await core.create_namespaced_pod("default", body)).metadata.name for _ in range(3)}
    assert len(names) == 3 and all(n.startswith("worker-") and len(n) == len("worker-") + 5 for n in names)


async def test_create_in_missing_namespace_is_404(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_pod("elsewhere", pod("a"))
    assert e.value.status == 404 and status_of(e.value)["message"] == 'namespaces "elsewhere" not found'


async def test_replace_with_stale_resource_version_is_409_conflict(core: client.CoreV1Api) -> None:
    cm = await core.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {"k": "1"}})
    cm.data = {"k": "2"}
    updated = await core.replace_namespaced_config_map("c", "default", cm)  # cm still has the old version
    assert updated.data == {"k": "2"}
    cm.data = {"k": "3"}
    with pytest.raises(ApiException) as e:
        await core.replace_namespaced_config_map("c", "default", cm)
    assert e.value.status == 409 and status_of(e.value)["reason"] == "Conflict"
    cm.metadata.resource_version = None  # no precondition: an unconditional update
    assert (await core.replace_namespaced_config_map("c", "default", cm)).data == {"k": "3"}


async def test_lease_replace_needs_a_resource_version(api: client.ApiClient) -> None:
    coordination = client.CoordinationV1Api(api)
    lease = await coordination.create_namespaced_lease("default", {"metadata": {"name": "l"},
                                                                   "spec": {"holderIdentity": "a"}})
    lease.metadata.resource_version = None
    with pytest.raises(ApiException) as e:
        await coordination.replace_namespaced_lease("l", "default", lease)
    assert e.value.status == 422 and "must be specified for an update" in status_of(e.value)["message"]


async def test_pod_spec_is_immutable_except_the_image(core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod("default", pod("a"))
    patched = await core.patch_namespaced_pod("a", "default", {"spec": {"containers": [
        {"name": "main", "image": "worker:2"}]}})
    assert patched.spec.containers[0].image == "worker:2" and patched.metadata.generation == 2
    with pytest.raises(ApiException) as e:
        await core.patch_namespaced_pod("a", "default", {"spec": {"containers": [
            {"name": "main", "env": [{"name": "A", "value": "1"}]}]}})
    assert e.value.status == 422 and status_of(e.value)["reason"] == "Invalid"


async def test_status_written_through_the_main_resource_is_ignored(core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod("default", pod("a"))
    patched = await core.patch_namespaced_pod("a", "default", {"status": {"phase": "Running"}})
    assert patched.status.phase == "Pending"
    patched = await core.patch_namespaced_pod_status("a", "default", {"status": {"phase": "Running"}})
    assert patched.status.phase == "Running"


async def test_no_op_patch_keeps_the_resource_version(core: client.CoreV1Api) -> None:
    created = await core.create_namespaced_pod("default", pod("a", {"app": "x"}))
    patched = await core.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"app": "x"}}})
    assert patched.metadata.resource_version == created.metadata.resource_version


async def test_merge_and_json_patches(core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod("default", pod("a", {"app": "x", "tier": "1"}))
    merged = await core.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"tier": None, "new": "y"}}},
                                             _content_type="application/merge-patch+json")
    assert merged.metadata.labels == {"app": "x", "new": "y"}
    ops = [{"op": "test", "path": "/metadata/labels/app", "value": "x"},
           {"op": "add", "path": "/metadata/annotations", "value": {"a": "1"}},
           {"op": "replace", "path": "/metadata/labels/new", "value": "z"},
           {"op": "remove", "path": "/metadata/labels/app"}]
    patched = await core.patch_namespaced_pod("a", "default", ops)  # a list body is sent as a JSON patch
    assert patched.metadata.labels == {"new": "z"} and patched.metadata.annotations == {"a": "1"}
    with pytest.raises(ApiException) as e:
        await core.patch_namespaced_pod("a", "default", [{"op": "test", "path": "/metadata/labels/new", "value": "q"}])
    assert e.value.status == 422


async def test_server_side_apply_is_415(core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod("default", pod("a"))
    with pytest.raises(ApiException) as e:
        await core.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"a": "b"}}},
                                        field_manager="test", _content_type="application/apply-patch+yaml")
    assert e.value.status == 415


async def test_other_kinds_cluster_scoped_and_namespaced(emulator: KubeEmulator, core: client.CoreV1Api) -> None:
    await core.create_node({"metadata": {"name": "gpu-1", "labels": {"nvidia.com/gpu.product": "A100"}}})
    await core.create_node({"metadata": {"name": "cpu-1"}})
    gpus = await core.list_node(label_selector="nvidia.com/gpu.product in (A100,H100)")
    assert [n.metadata.name for n in gpus.items] == ["gpu-1"] and gpus.items[0].metadata.namespace is None
    await core.create_persistent_volume({"metadata": {"name": "pv-1"}, "spec": {
        "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/data"}}})
    await core.create_namespaced_persistent_volume_claim("default", {"metadata": {"name": "models"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    await core.create_namespaced_service("default", {"metadata": {"name": "web"}, "spec": {
        "selector": {"app": "web"}, "ports": [{"port": 80}]}})
    await core.create_namespaced_event("default", {"metadata": {"name": "e1"}, "reason": "Scaled",
                                                   "involvedObject": {"kind": "Pod", "name": "a"}})
    events = await core.list_namespaced_event("default", field_selector="involvedObject.name=a,reason=Scaled")
    assert [e.metadata.name for e in events.items] == ["e1"]
    assert (await core.read_persistent_volume("pv-1")).spec.capacity == {"storage": "1Gi"}
    assert (await core.read_namespaced_service("web", "default")).spec.ports[0].port == 80
    await core.delete_node("cpu-1")
    assert [n["metadata"]["name"] for n in emulator.objects("nodes")] == ["gpu-1"]


async def test_node_label_removed_by_a_merge_patch_conditional_on_its_resource_version(
        core: client.CoreV1Api) -> None:
    key = "flashboot.lbproxy.io/llm"
    await core.create_node({"metadata": {"name": "gpu-1", "labels": {key: "1700000000", "zone": "a"}}})
    await core.create_node({"metadata": {"name": "gpu-2", "labels": {"flashboot.lbproxy.io/other": "1"}}})
    [listed] = (await core.list_node(label_selector=key)).items  # "key": the label exists, any value
    assert listed.metadata.name == "gpu-1"
    await core.patch_node("gpu-1", {"metadata": {"labels": {"zone": "b"}}})  # the node changes after the list
    stale = {"metadata": {"resourceVersion": listed.metadata.resource_version, "labels": {key: None}}}
    with pytest.raises(ApiException) as e:
        await core.patch_node("gpu-1", stale, _content_type="application/merge-patch+json")
    assert e.value.status == 409 and status_of(e.value)["reason"] == "Conflict"
    current = await core.read_node("gpu-1")
    assert current.metadata.labels == {key: "1700000000", "zone": "b"}
    fresh = {"metadata": {"resourceVersion": current.metadata.resource_version, "labels": {key: None}}}
    removed = await core.patch_node("gpu-1", fresh, _content_type="application/merge-patch+json")
    assert removed.metadata.labels == {"zone": "b"}
    assert (await core.list_node(label_selector=key)).items == []


async def test_forbid_answers_403_like_the_rbac_authorizer(emulator: KubeEmulator, core: client.CoreV1Api,
                                                          apps: client.AppsV1Api) -> None:
    await core.create_node({"metadata": {"name": "gpu-1"}})
    emulator.forbid("list", "nodes")
    emulator.forbid("patch", "deployments/scale")
    with pytest.raises(ApiException) as e:
        await core.list_node(label_selector="a")
    body = status_of(e.value)
    assert (e.value.status, body["reason"], body["details"]) == (403, "Forbidden", {"kind": "nodes"})
    assert body["message"] == ('nodes is forbidden: User "system:serviceaccount:default:emulator" cannot list '
                               'resource "nodes" in API group "" at the cluster scope')
    assert (await core.read_node("gpu-1")).metadata.name == "gpu-1"  # other verbs are allowed
    await core.patch_node("gpu-1", {"metadata": {"labels": {"a": "1"}}})
    await apps.create_namespaced_deployment("default", {
        "metadata": {"name": "web"}, "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                                              "template": {"metadata": {"labels": {"app": "web"}},
                                                           "spec": pod("x")["spec"]}}})
    with pytest.raises(ApiException) as e:
        await apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 1}})
    assert e.value.status == 403 and 'cannot patch resource "deployments/scale" in API group "apps" in the ' \
        'namespace "default"' in status_of(e.value)["message"]
    assert (await apps.read_namespaced_deployment_scale("web", "default")).spec.replicas == 0


async def test_all_namespaces_list_and_discovery(api: client.ApiClient, core: client.CoreV1Api,
                                                 emulator: KubeEmulator) -> None:
    await core.create_namespace({"metadata": {"name": "gpu"}})
    await core.create_namespaced_pod("gpu", pod("a"))
    await core.create_namespaced_pod("default", pod("b"))
    everywhere = await core.list_pod_for_all_namespaces()
    assert sorted((p.metadata.namespace, p.metadata.name) for p in everywhere.items) == [("default", "b"),
                                                                                        ("gpu", "a")]
    # The typed client never asks for discovery; it is there for clients that do.
    discovery = {"/api", "/apis", "/version", "/api/v1", "/apis/apps/v1", "/apis/coordination.k8s.io/v1"}
    assert not [p for _, p in emulator.requests if p in discovery]
    assert (await client.VersionApi(api).get_code()).git_version.startswith("v1.")
    groups = await client.ApisApi(api).get_api_versions()
    assert {g.name for g in groups.groups} == {"apps", "coordination.k8s.io"}
    resources = await client.AppsV1Api(api).get_api_resources()
    assert {"deployments", "deployments/scale", "replicasets"} <= {r.name for r in resources.resources}


# --- selectors ---------------------------------------------------------------------------------------------

LABELS = {"p1": {"app": "web", "tier": "gpu"}, "p2": {"app": "web", "tier": "cpu"}, "p3": {"app": "db"},
          "p4": {"tier": "gpu", "canary": "true"}}


@pytest.mark.parametrize(("selector", "names"), [
    ("app=web", ["p1", "p2"]),
    ("app==web", ["p1", "p2"]),
    ("app!=web", ["p3", "p4"]),  # objects without the key match !=
    ("tier in (gpu, tpu)", ["p1", "p4"]),
    ("tier notin (gpu)", ["p2", "p3"]),
    ("canary", ["p4"]),
    ("!tier", ["p3"]),
    ("app=web,tier=gpu", ["p1"]),
    ("app in (web,db),!canary,tier!=cpu", ["p1", "p3"]),
    ("", ["p1", "p2", "p3", "p4"]),
])
async def test_label_selectors(core: client.CoreV1Api, selector: str, names: list[str]) -> None:
    for name, labels in LABELS.items():
        await core.create_namespaced_pod("default", pod(name, labels))
    found = await core.list_namespaced_pod("default", label_selector=selector)
    assert [p.metadata.name for p in found.items] == names


async def test_field_selectors_on_name_and_phase(emulator: KubeEmulator, core: client.CoreV1Api) -> None:
    for name in ("a", "b", "c"):
        await core.create_namespaced_pod("default", pod(name))
    emulator.set_pod_running("default", "b", "10.0.0.2")
    running = await core.list_namespaced_pod("default", field_selector="status.phase=Running")
    assert [p.metadata.name for p in running.items] == ["b"]
    others = await core.list_namespaced_pod("default", field_selector="status.phase!=Running,metadata.name!=a")
    assert [p.metadata.name for p in others.items] == ["c"]
    with pytest.raises(ApiException) as e:
        await core.list_namespaced_pod("default", field_selector="spec.image=x")
    assert e.value.status == 400 and "field label not supported" in status_of(e.value)["message"]


async def test_malformed_label_selector_is_400(core: client.CoreV1Api) -> None:
    with pytest.raises(ApiException) as e:
        await core.list_namespaced_pod("default", label_selector="app in web")
    assert e.value.status == 400 and status_of(e.value)["reason"] == "BadRequest"


# --- deletion ----------------------------------------------------------------------------------------------

async def test_running_pod_terminates_gracefully_until_kubelet_finishes(emulator: KubeEmulator,
                                                                       core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod("default", pod("a"))
    emulator.set_pod_running("default", "a", "10.0.0.5")
    answer = await core.delete_namespaced_pod("a", "default")
    assert answer.metadata.deletion_timestamp is not None and answer.metadata.deletion_grace_period_seconds == 30
    still = await core.read_namespaced_pod("a", "default")
    assert still.metadata.deletion_timestamp == answer.metadata.deletion_timestamp
    emulator.finish_deletion("default", "a")
    with pytest.raises(ApiException) as e:
        await core.read_namespaced_pod("a", "default")
    assert e.value.status == 404


async def test_unscheduled_pod_and_grace_period_zero_delete_at_once(emulator: KubeEmulator,
                                                                    core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod("default", pod("pending"))
    await core.create_namespaced_pod("default", pod("running"))
    emulator.set_pod_running("default", "running", "10.0.0.6")
    await core.delete_namespaced_pod("pending", "default")  # nothing to stop on a node: gone at once
    await core.delete_namespaced_pod("running", "default", grace_period_seconds=0)
    assert emulator.pods() == []


async def test_deleting_a_configmap_answers_a_success_status(core: client.CoreV1Api) -> None:
    await core.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    answer = await core.delete_namespaced_config_map("c", "default")
    assert answer["kind"] == "Status" and answer["status"] == "Success"  # the client returns a plain dict


# --- watches -----------------------------------------------------------------------------------------------

async def test_watch_from_a_resource_version_replays_changes_for_the_selector(emulator: KubeEmulator,
                                                                              core: client.CoreV1Api) -> None:
    start = emulator.resource_version
    await core.create_namespaced_pod("default", pod("web-1", {"app": "web"}))
    await core.create_namespaced_pod("default", pod("db-1", {"app": "db"}))
    emulator.set_pod_running("default", "web-1", "10.0.0.7")
    emulator.set_pod_running("default", "db-1", "10.0.0.8")
    await core.delete_namespaced_pod("web-1", "default", grace_period_seconds=0)
    events = await watch_events(core.list_namespaced_pod, "default", label_selector="app=web",
                                resource_version=start, timeout_seconds=5, count=5)
    # Running = a bind and a status write; grace period 0 = deletionTimestamp written, then the delete.
    assert events == [("ADDED", "web-1"), ("MODIFIED", "web-1"), ("MODIFIED", "web-1"), ("MODIFIED", "web-1"),
                      ("DELETED", "web-1")]


async def test_watch_without_resource_version_starts_with_synthetic_added(emulator: KubeEmulator,
                                                                          core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod("default", pod("old", {"app": "web"}))

    async def later() -> None:
        await emulator.wait_watches(1)
        await core.create_namespaced_pod("default", pod("new", {"app": "web"}))

    task = asyncio.create_task(later())
    events = await watch_events(core.list_namespaced_pod, "default", timeout_seconds=5, count=2)
    await task
    assert events == [("ADDED", "old"), ("ADDED", "new")]


async def test_object_leaving_the_selector_is_deleted_for_the_watch(emulator: KubeEmulator,
                                                                   core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod("default", pod("a", {"app": "web"}))
    start = emulator.resource_version
    await core.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"app": "other"}}})
    await core.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"app": "web"}}})
    await core.create_namespaced_pod("default", pod("b", {"app": "other"}))
    await core.create_namespaced_pod("default", pod("c", {"app": "web"}))
    events = await watch_events(core.list_namespaced_pod, "default", label_selector="app=web",
                                resource_version=start, timeout_seconds=5, count=3)
    assert events == [("DELETED", "a"), ("ADDED", "a"), ("ADDED", "c")]


async def test_watch_after_compaction_raises_410(emulator: KubeEmulator, core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod("default", pod("a"))
    stale = emulator.resource_version
    await core.create_namespaced_pod("default", pod("b"))
    emulator.compact()
    path = "/api/v1/namespaces/default/pods"

    # With timeout_seconds the client turns the ERROR event into ApiException(410) at once.
    before = len(emulator.requests)
    with pytest.raises(ApiException) as e:
        await watch_events(core.list_namespaced_pod, "default", resource_version=stale, timeout_seconds=5)
    assert e.value.status == 410 and "Expired" in e.value.reason
    assert emulator.requests[before:] == [("GET", path)]

    # Without it ("watch forever") the client retries once from the same resourceVersion, then raises.
    before = len(emulator.requests)
    with pytest.raises(ApiException) as e:
        await watch_events(core.list_namespaced_pod, "default", resource_version=stale)
    assert e.value.status == 410
    assert emulator.requests[before:] == [("GET", path), ("GET", path)]

    # The current resourceVersion is still fine.
    now = emulator.resource_version
    await core.create_namespaced_pod("default", pod("c"))
    assert await watch_events(core.list_namespaced_pod, "default", resource_version=now, timeout_seconds=5,
                              count=1) == [("ADDED", "c")]


async def test_watch_gets_bookmarks_when_it_allows_them(emulator: KubeEmulator, core: client.CoreV1Api) -> None:
    emulator.bookmark_interval = 0.2
    async with Watch() as w:
        async for event in w.stream(core.list_namespaced_pod, "default", allow_watch_bookmarks=True,
                                    timeout_seconds=2):
            assert event["type"] == "BOOKMARK"
            assert event["raw_object"]["metadata"]["resourceVersion"] == emulator.resource_version
            assert w.resource_version == emulator.resource_version
            break


async def test_dropped_watch_stream(emulator: KubeEmulator, core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod("default", pod("a"))

    async def drop(abrupt: bool, watches: int) -> None:
        await emulator.wait_watches(watches)
        emulator.drop_watches(abrupt=abrupt)

    # A clean end of the stream ends a finite watch quietly...
    task = asyncio.create_task(drop(abrupt=False, watches=1))
    assert await watch_events(core.list_namespaced_pod, "default", timeout_seconds=30) == [("ADDED", "a")]
    await task
    # ...and a connection reset surfaces as aiohttp's ClientPayloadError (the client does not retry it, not even
    # when watching forever).
    task = asyncio.create_task(drop(abrupt=True, watches=2))
    with pytest.raises(aiohttp.ClientPayloadError):
        await watch_events(core.list_namespaced_pod, "default", timeout_seconds=30)
    await task


async def test_watch_forever_resumes_after_a_clean_end(emulator: KubeEmulator, core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod("default", pod("a"))
    seen: list[tuple[str, str]] = []
    async with Watch() as w:
        async for event in w.stream(core.list_namespaced_pod, "default"):
            seen.append((event["type"], event["raw_object"]["metadata"]["name"]))
            if len(seen) == 1:
                last = event["raw_object"]["metadata"]["resourceVersion"]
                emulator.drop_watches(abrupt=False)
                await core.create_namespaced_pod("default", pod("b"))
            else:
                break
    assert seen == [("ADDED", "a"), ("ADDED", "b")]
    # The client reconnected by itself, from the resourceVersion of the last event it had seen.
    watches = [q for _, _, q in emulator.api.queries if q.get("watch") == "true"]
    assert len(watches) == 2 and "resourceVersion" not in watches[0] and watches[1]["resourceVersion"] == last


# --- outage ------------------------------------------------------------------------------------------------

async def test_client_fails_while_the_api_is_down_and_works_after(emulator: KubeEmulator,
                                                                  core: client.CoreV1Api) -> None:
    await core.create_namespaced_pod("default", pod("a"))
    port = emulator.port
    await emulator.stop()
    with pytest.raises(aiohttp.ClientConnectorError):  # connection refused: not an ApiException
        await core.read_namespaced_pod("a", "default")
    await emulator.start(port)
    assert (await core.read_namespaced_pod("a", "default")).metadata.name == "a"  # state survived


# --- leader election -----------------------------------------------------------------------------------------

class CreatingLeaseLock(LeaseLock):
    """LeaseLock whose create() works: 37.0.2 passes ``pretty=True`` to a ``StrictStr`` parameter (see below)."""

    async def create(self, name: str, namespace: str, election_record: Any) -> bool:
        body = client.V1Lease(metadata=client.V1ObjectMeta(name=name), spec=self.update_lease(election_record))
        try:
            await self.api_instance.create_namespaced_lease(namespace, body)
        except ApiException:
            return False
        return True


async def test_library_lease_lock_cannot_create_its_lease(api: client.ApiClient) -> None:
    """kubernetes 37.0.2: LeaseLock.create() raises a pydantic ValidationError before any request is sent, and
    LeaderElection.run() lets it escape. If this test fails, the library is fixed and CreatingLeaseLock can go."""
    lock = LeaseLock("lbproxy-leader", "default", "a", api)
    record = LeaderElectionRecord("a", "2", "2026-01-01 00:00:00.000001", "2026-01-01 00:00:00.000001")
    with pytest.raises(pydantic.ValidationError, match="pretty"):
        await lock.create("lbproxy-leader", "default", record)


async def test_one_candidate_leads_and_the_other_takes_over(emulator: KubeEmulator,
                                                           new_client: ClientFactory) -> None:
    leading: list[str] = []
    # The library runs on_started as a task of its own, and does not cancel it when run() is cancelled
    # (lbproxy's KubeClient.lead does): the test cancels them itself.
    leaders: list[asyncio.Task[Any]] = []

    async def candidate(identity: str) -> None:
        lock = CreatingLeaseLock("lbproxy-leader", "default", identity, await new_client())

        async def on_started() -> None:
            leading.append(identity)
            task = asyncio.current_task()
            assert task is not None
            leaders.append(task)
            await asyncio.Event().wait()

        async def on_stopped() -> None:
            pass

        # The library's minimums: retry_period >= 1, renew_deadline > 1.2 * retry, lease_duration > renew.
        config = electionconfig.Config(lock, lease_duration=2, renew_deadline=1.5, retry_period=1,
                                       onstarted_leading=on_started, onstopped_leading=on_stopped)
        await leaderelection.LeaderElection(config).run()

    tasks = {name: asyncio.create_task(candidate(name)) for name in ("a", "b")}
    try:
        await emulator.wait_for(lambda: leading, 5, "a leader")
        await asyncio.sleep(2.5)  # longer than the lease: the leader renews it, the follower keeps waiting
        assert len(leading) == 1
        first = leading[0]
        lease = emulator.get("leases", "default", "lbproxy-leader")
        assert lease is not None and lease["spec"]["holderIdentity"] == first
        tasks[first].cancel()
        other = "b" if first == "a" else "a"
        await emulator.wait_for(lambda: leading[1:] == [other], 6, "the other candidate to take over")
        lease = emulator.get("leases", "default", "lbproxy-leader")
        assert lease is not None and lease["spec"]["holderIdentity"] == other
    finally:
        for task in [*tasks.values(), *leaders]:
            task.cancel()
        await asyncio.gather(*tasks.values(), *leaders, return_exceptions=True)
    assert not any(t.done() and not t.cancelled() for t in tasks.values())
    lease_path = "/apis/coordination.k8s.io/v1/namespaces/default/leases"
    calls = {(m, p) for m, p in emulator.requests if p.startswith(lease_path)}
    assert calls == {("GET", lease_path + "/lbproxy-leader"), ("POST", lease_path),
                     ("PUT", lease_path + "/lbproxy-leader")}
