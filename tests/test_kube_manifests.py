"""Worker manifests and node affinity for every placement setting: pure, no cluster."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import yaml

from lbproxy.config import parse_config
from lbproxy.kube import manifests
from lbproxy.kube.placement import label_name, node_affinity

from .conftest import ROOT


def cfg(**extra: Any):
    base: dict[str, Any] = {"name": "llm", "worker": {"image": "img:1"}, "backend": {"type": "kubernetes"}}
    for k, v in extra.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return parse_config(base, environ={})


def required(aff: dict[str, Any]) -> list[list[dict[str, Any]]]:
    terms = aff["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    return [t["matchExpressions"] for t in terms]


def test_one_deployment_per_gpu_category_in_preference_order():
    c = cfg(gpu={"categories": ["80gb-pro", "80gb"]})
    pools = manifests.pools(c)
    assert [(p.name, p.category, p.rank) for p in pools] == [("llm-80gb-pro", "80gb-pro", 0), ("llm-80gb", "80gb", 1)]
    docs = manifests.render(c)
    assert [d["metadata"]["name"] for d in docs] == ["llm-80gb-pro", "llm-80gb"]
    h100 = required(docs[0]["spec"]["template"]["spec"]["affinity"]["nodeAffinity"])
    assert h100 == [[{"key": "nvidia.com/gpu.product", "operator": "In",
                      "values": list(c.gpu.products("80gb-pro"))}]]
    assert "NVIDIA-H100-80GB-HBM3" in c.gpu.products("80gb-pro")
    assert any("A100" in p for p in c.gpu.products("80gb"))


def test_gpu_types_narrow_the_category():
    c = cfg(gpu={"categories": ["48gb-pro"], "types": ["L40S"]})
    [exprs] = required(node_affinity(c, "48gb-pro"))
    assert exprs[0]["values"] == list(c.gpu.products("48gb-pro"))
    assert all("L40S" in v for v in exprs[0]["values"])


def test_gpu_limit_ports_env_probe_and_graceful_stop():
    c = cfg(workers={"gpus": 2}, worker={"image": "img:1", "port": 8000, "health_port": 8001,
                                          "env": {"A": "1"}}, expose_ports=["9000/tcp", "8000/http"],
            timeouts={"execution": "10m"})
    [dep, svc] = manifests.render(c)
    pod = dep["spec"]["template"]["spec"]
    [ctr] = pod["containers"]
    assert ctr["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert [(p["name"], p["containerPort"]) for p in ctr["ports"]] == [("http", 8000), ("health", 8001),
                                                                        ("expose-9000", 9000)]
    env = {e["name"]: e.get("value") for e in ctr["env"]}
    assert env["PORT"] == "8000" and env["PORT_HEALTH"] == "8001" and env["A"] == "1"
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/ping", "port": 8001}
    assert ctr["lifecycle"]["preStop"] == {"sleep": {"seconds": manifests.PRESTOP_SECONDS}}
    assert pod["terminationGracePeriodSeconds"] >= 600
    assert svc["kind"] == "Service" and [p["port"] for p in svc["spec"]["ports"]] == [9000, 8000]
    assert svc["spec"]["selector"] == {manifests.ENDPOINT_LABEL: "llm"}


def test_cpu_workers_have_no_gpu_limit():
    [dep] = manifests.render(cfg(workers={"gpus": 0}))
    assert "nvidia.com/gpu" not in dep["spec"]["template"]["spec"]["containers"][0].get("resources", {}).get(
        "limits", {})


def test_cuda_versions_mean_this_version_or_newer():
    c = cfg(gpu={"cuda_versions": ["12.4", "12.6"]})
    terms = required(node_affinity(c, None))
    assert terms == [
        [{"key": "nvidia.com/cuda.driver.major", "operator": "Gt", "values": ["12"]}],
        [{"key": "nvidia.com/cuda.driver.major", "operator": "In", "values": ["12"]},
         {"key": "nvidia.com/cuda.driver.minor", "operator": "Gt", "values": ["3"]}],
    ]
    assert required(node_affinity(cfg(gpu={"cuda_versions": ["12"]}), None)) == [
        [{"key": "nvidia.com/cuda.driver.major", "operator": "Gt", "values": ["12"]}],
        [{"key": "nvidia.com/cuda.driver.major", "operator": "In", "values": ["12"]}],
    ]


def test_data_centers_are_required_and_label_keys_configurable():
    c = cfg(placement={"data_centers": ["eu-1a"]}, backend={"node_labels": {"zone": "topology.kubernetes.io/region"}})
    assert required(node_affinity(c, None)) == [[{"key": "topology.kubernetes.io/region", "operator": "In",
                                                  "values": ["eu-1a"]}]]


def test_model_and_flashboot_are_preferences():
    c = cfg(placement={"model": "meta-llama/Llama-3.1-8B-Instruct"})
    pref = node_affinity(c, None)["preferredDuringSchedulingIgnoredDuringExecution"]
    keys = [(p["weight"], p["preference"]["matchExpressions"][0]["key"]) for p in pref]
    assert keys == [(50, "models.lbproxy.io/meta-llama.Llama-3.1-8B-Instruct"), (20, "flashboot.lbproxy.io/llm")]
    assert node_affinity(cfg(flashboot=False), None) is None


def test_network_volume_is_mounted():
    c = cfg(placement={"network_volume": "weights"}, backend={"volume_mount_path": "/models"})
    [dep] = manifests.render(c)
    pod = dep["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "network-volume", "persistentVolumeClaim": {"claimName": "weights"}}]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "network-volume", "mountPath": "/models"}]


def test_tolerations_pull_secrets_and_resources_pass_through():
    c = cfg(backend={"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                     "image_pull_secrets": ["regcred"], "worker_resources": {"requests": {"cpu": "2"}}})
    pod = manifests.render(c)[0]["spec"]["template"]["spec"]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["containers"][0]["resources"] == {"requests": {"cpu": "2"}, "limits": {"nvidia.com/gpu": "1"}}


def test_template_hash_changes_with_the_pod_template_only():
    a = manifests.render(cfg())[0]["metadata"]["annotations"][manifests.TEMPLATE_HASH]
    assert a == manifests.render(cfg(workers={"max": 9}))[0]["metadata"]["annotations"][manifests.TEMPLATE_HASH]
    assert a != manifests.render(cfg(worker={"image": "img:2"}))[0]["metadata"]["annotations"][manifests.TEMPLATE_HASH]


@pytest.mark.parametrize(("model", "name"), [
    ("meta-llama/Llama-3.1-8B", "meta-llama.Llama-3.1-8B"),
    ("weird name!", "weird-name"),
])
def test_label_names_are_valid(model, name):
    assert label_name(model) == name


def test_long_label_names_keep_a_hash():
    a, b = label_name("x" * 100 + "a"), label_name("x" * 100 + "b")
    assert len(a) <= 63 and a != b


def test_render_command_prints_the_manifests():
    r = subprocess.run([sys.executable, "-m", "lbproxy", "render", "examples/kubernetes/h100-fallback.yaml"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = list(yaml.safe_load_all(r.stdout))
    assert [d["kind"] for d in docs] == ["Deployment", "Deployment", "Service"]
    assert "&id" not in r.stdout  # no YAML anchors for reviewers
