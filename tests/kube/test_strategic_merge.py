"""The emulator's strategic merge patch agrees with kubectl's (``kubectl patch --local``, apimachinery's code).

Each case is applied by ``patches.strategic_merge_patch`` and by kubectl to the same document; the results must be
equal. One case also goes through the emulator over HTTP with the real client and is compared on the fields the
patch touches (the server adds metadata and defaults that the offline kubectl does not).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes.aio import client

from .patches import PatchError, strategic_merge_patch

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")

POD: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "worker", "labels": {"app": "gpu", "tier": "a"},
                 "annotations": {"keep": "1", "drop": "2"}, "finalizers": ["x/one", "x/two"]},
    "spec": {
        "containers": [
            {"name": "main", "image": "worker:1",
             "ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 9090, "name": "metrics"}],
             "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
             "volumeMounts": [{"name": "cache", "mountPath": "/cache"}, {"name": "models", "mountPath": "/models"}]},
            {"name": "sidecar", "image": "proxy:1"},
        ],
        "volumes": [{"name": "cache", "emptyDir": {}}, {"name": "models", "hostPath": {"path": "/m"}}],
        "tolerations": [{"key": "gpu", "operator": "Exists"}, {"key": "spot", "operator": "Exists"}],
    },
}
DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1", "kind": "Deployment",
    "metadata": {"name": "web", "annotations": {"a": "1"}},
    "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
             "template": {"metadata": {"labels": {"app": "web"}}, "spec": copy.deepcopy(POD["spec"])}},
}

CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "annotation added and one removed with null": (POD, {"metadata": {"annotations": {"new": "3", "drop": None}}}),
    "container image changed by name": (DEPLOYMENT, {"spec": {"template": {"spec": {"containers": [
        {"name": "main", "image": "worker:2"}]}}}}),
    "env merged by name": (POD, {"spec": {"containers": [{"name": "main", "env": [
        {"name": "C", "value": "3"}, {"name": "A", "value": "9"}]}]}}),
    "ports merged by containerPort": (POD, {"spec": {"containers": [{"name": "main", "ports": [
        {"containerPort": 8080, "name": "alt"}, {"containerPort": 80, "name": "web"}]}]}}),
    "container deleted with $patch: delete": (DEPLOYMENT, {"spec": {"template": {"spec": {"containers": [
        {"name": "sidecar", "$patch": "delete"}]}}}}),
    "new container goes before untouched ones": (POD, {"spec": {"containers": [
        {"name": "init", "image": "busybox"}, {"name": "main", "image": "worker:3"}]}}),
    "list replaced with $patch: replace": (POD, {"spec": {"containers": [
        {"name": "only", "image": "solo:1"}, {"$patch": "replace"}]}}),
    "map replaced with $patch: replace": (POD, {"metadata": {"labels": {"app": "cpu", "$patch": "replace"}}}),
    "map deleted with $patch: delete": (POD, {"metadata": {"annotations": {"$patch": "delete"}}}),
    "tolerations (no strategy) replaced": (POD, {"spec": {"tolerations": [{"key": "new", "operator": "Exists"}]}}),
    "volumeMounts merged by mountPath": (POD, {"spec": {"containers": [{"name": "main", "volumeMounts": [
        {"name": "scratch", "mountPath": "/cache"}]}]}}),
    "finalizers merged and deleted from a primitive list": (POD, {"metadata": {
        "finalizers": ["x/three"], "$deleteFromPrimitiveList/finalizers": ["x/one"]}}),
    "element order set with $setElementOrder": (POD, {"spec": {
        "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "main"}],
        "containers": [{"name": "main", "image": "worker:4"}]}}),
    "volume replaced keeping only retained keys": (POD, {"spec": {"volumes": [
        {"name": "models", "emptyDir": {}, "$retainKeys": ["emptyDir", "name"]}]}}),
    "nulls dropped from a value that is new": (POD, {"spec": {"nodeSelector": {"gpu": "a100", "zone": None}}}),
    "directives dropped from a list that is new": (POD, {"spec": {"initContainers": [
        {"name": "gone", "image": "x", "$patch": "delete"}, {"name": "setup", "image": "busybox"}]}}),
    "port deleted by containerPort": (DEPLOYMENT, {"spec": {"template": {"spec": {"containers": [
        {"name": "main", "ports": [{"containerPort": 9090, "$patch": "delete"}]}]}}}}),
    "GPU limit added to a container": (POD, {"spec": {"containers": [
        {"name": "main", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}),
    "replicas and selector label changed": (DEPLOYMENT, {"spec": {"replicas": 5, "template": {"metadata": {
        "labels": {"extra": "yes"}}}}}),
}


def kubectl_patch(doc: dict[str, Any], patch: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(doc))
    out = subprocess.run([KUBECTL or "kubectl", "patch", "--local", "-f", str(path), "-p", json.dumps(patch),
                          "--type", "strategic", "-o", "json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_set_element_order_must_agree_with_the_patch_list(tmp_path: Path) -> None:
    patch = {"spec": {"containers": [{"name": "sidecar", "image": "p:2"}, {"name": "new", "image": "n"}],
                      "$setElementOrder/containers": [{"name": "new"}, {"name": "sidecar"}, {"name": "main"}]}}
    with pytest.raises(PatchError, match="doesn't match"):
        strategic_merge_patch(POD, patch, "Pod")
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(POD))
    out = subprocess.run([KUBECTL or "kubectl", "patch", "--local", "-f", str(path), "-p", json.dumps(patch),
                          "--type", "strategic", "-o", "json"], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0 and "doesn't match $setElementOrder list" in out.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_strategic_merge_agrees_with_kubectl(case: str, tmp_path: Path) -> None:
    doc, patch = CASES[case]
    ours = strategic_merge_patch(doc, patch, doc["kind"])
    assert ours == kubectl_patch(doc, patch, tmp_path)
    assert doc == CASES[case][0]  # the inputs are left alone


async def test_strategic_patch_over_http_agrees_with_kubectl(apps: client.AppsV1Api, tmp_path: Path) -> None:
    created = await apps.create_namespaced_deployment("default", copy.deepcopy(DEPLOYMENT))
    patch = {"metadata": {"annotations": {"a": None, "b": "2"}},
             "spec": {"template": {"spec": {"containers": [
                 {"name": "main", "image": "worker:2", "env": [{"name": "C", "value": "3"}],
                  "ports": [{"containerPort": 8080, "name": "alt"}]},
                 {"name": "sidecar", "$patch": "delete"}]}}}}
    # A dict body makes the client send application/strategic-merge-patch+json.
    patched = await apps.patch_namespaced_deployment("web", "default", patch)
    expected = kubectl_patch(DEPLOYMENT, patch, tmp_path)
    got = client.ApiClient().sanitize_for_serialization(patched)
    assert got["metadata"]["annotations"] == expected["metadata"]["annotations"]
    mine, theirs = got["spec"]["template"]["spec"], expected["spec"]["template"]["spec"]
    assert [c["name"] for c in mine["containers"]] == [c["name"] for c in theirs["containers"]] == ["main"]
    for key in ("image", "env", "volumeMounts"):
        assert mine["containers"][0][key] == theirs["containers"][0][key]
    # The server defaults protocol: TCP on ports; kubectl --local does not.
    assert [(p["containerPort"], p["name"]) for p in mine["containers"][0]["ports"]] == [
        (p["containerPort"], p["name"]) for p in theirs["containers"][0]["ports"]]
    assert patched.metadata.generation == created.metadata.generation + 1
