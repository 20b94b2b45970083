"""The Helm chart (charts/lbproxy) installs a working endpoint: checked with real Helm, the Kubernetes schemas
and lbproxy's own code, since no cluster runs here.

- Helm's Go library (helm-python-sdk, no helm binary) lints the chart strictly, renders it offline and runs
  `helm install --dry-run=client`, which is where values.schema.json rejects bad values.
- kubernetes-validate checks every rendered document (and the worker Deployments `lbproxy render` prints for
  the rendered config) against the Kubernetes OpenAPI schemas, strictly (unknown fields are errors), for the
  oldest Kubernetes the chart supports and the newest the validator knows. The ServiceMonitor is a Prometheus
  Operator CRD those schemas do not have: its metadata is validated, its spec checked against the CRD's fields.
- The rendered ConfigMap is read by lbproxy's own config loader; the proxy's RBAC is compared with the calls in
  lbproxy/kube/client.py.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from pydantic import BaseModel

from lbproxy import __version__
from lbproxy.checks import backend_problems
from lbproxy.config import Config, ConfigError, load_config, parse_config
from lbproxy.config_fields import settings
from lbproxy.durations import parse_duration
from lbproxy.kube import manifests
from lbproxy.metrics import Metrics

from .conftest import ROOT

CHART = ROOT / "charts" / "lbproxy"
GPU_VALUES = ROOT / "examples" / "kubernetes" / "values-h100-a100.yaml"
GPU_CONFIG = ROOT / "examples" / "kubernetes" / "h100-fallback.yaml"
RELEASE = "my-endpoint"

# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest kubernetes-validate knows.
MIN_KUBE = re.search(r">=\s*(\d+\.\d+)", yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"])[1]
KUBE_VERSIONS = (MIN_KUBE, latest_version())

# Everything optional switched on, on top of the GPU example: every template renders.
EVERYTHING: dict[str, Any] = {
    "gpu": {"types": ["H100", "A100"]},
    "backend": {"image_pull_secrets": ["registry-creds"], "fallback_after": "90s",
                "node_labels": {"zone": "topology.kubernetes.io/region"}},
    "worker": {"health_port": 8001},
    "proxy": {
        "service": {"type": "LoadBalancer", "nodePort": 30080, "loadBalancerSourceRanges": ["10.0.0.0/8"],
                    "annotations": {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"}},
        "imagePullSecrets": ["registry-creds"],
        "podAnnotations": {"example.com/team": "ml"},
        "podLabels": {"example.com/tier": "inference"},
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "proxy", "effect": "NoSchedule"}],
        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {
                "matchLabels": {"app.kubernetes.io/instance": "llama"}}}}]}},
        "podDisruptionBudget": {"minAvailable": 2},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/x"}},
        "serviceMonitor": {"relabelings": [{"targetLabel": "cluster", "replacement": "gpu-1"}]},
        "networkPolicy": {"proxy": True, "httpFrom": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                          "adminFrom": [{"namespaceSelector": {"matchLabels": {
                              "kubernetes.io/metadata.name": "monitoring"}}}],
                          "workersFrom": [{"podSelector": {"matchLabels": {"role": "debug"}}}]},
    },
}


# ------------------------------------------------------------------------------------------------ helpers


def gpu_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(GPU_VALUES.read_text())
    return values


def merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render(values: dict[str, Any] | None = None, release: str = RELEASE,
           namespace: str = "default") -> dict[str, list[dict[str, Any]]]:
    """Helm's offline render, hooks and tests included: template path -> its documents."""
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values, name=release, namespace=namespace, is_install=True)
    return {path: [d for d in yaml.safe_load_all(text) if d] for path, text in files.items()
            if not path.endswith("NOTES.txt")}


def notes(values: dict[str, Any] | None = None, release: str = RELEASE, namespace: str = "default") -> str:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=release, namespace=namespace, is_install=True)["lbproxy/templates/NOTES.txt"]


def documents(values: dict[str, Any] | None = None, release: str = RELEASE,
              namespace: str = "default") -> list[dict[str, Any]]:
    return [doc for docs in render(values, release, namespace).values() for doc in docs]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} rendered"
    return found[0]


def install_dry_run(values: dict[str, Any] | None, release: str = RELEASE, namespace: str = "default") -> Any:
    """`helm install --dry-run=client`: schema validation, rendering and the kubeVersion check of a real install."""
    with helm.Chart.load(CHART) as chart:
        config = helm.Config(namespace=namespace, storage_driver="memory")
        try:
            return config.install(chart, release, values, dry_run="client", namespace=namespace)
        finally:
            config.close()


def rendered_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The endpoint config in the chart's ConfigMap, as YAML data."""
    configmap = next(d for d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {}))
    data: dict[str, Any] = yaml.safe_load(configmap["data"]["config.yaml"])
    return data


def validate(doc: dict[str, Any], version: str) -> None:
    """kubernetes-validate --strict; for the ServiceMonitor (a CRD it has no schema for) its metadata, and its
    spec against the fields of the Prometheus Operator's monitoring.coreos.com/v1 API."""
    if doc["apiVersion"] != "monitoring.coreos.com/v1":
        kubernetes_validate.validate(doc, version, strict=True)
        return
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}, version,
                                 strict=True)
    spec = doc["spec"]
    assert set(spec) <= {"endpoints", "selector", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels",
                         "sampleLimit", "attachMetadata"}
    assert set(spec["namespaceSelector"]) <= {"any", "matchNames"}
    assert set(spec["selector"]) <= {"matchLabels", "matchExpressions"}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= SERVICE_MONITOR_ENDPOINT_FIELDS, set(endpoint) - SERVICE_MONITOR_ENDPOINT_FIELDS
        for key in ("interval", "scrapeTimeout"):
            assert re.fullmatch(PROMETHEUS_DURATION, endpoint.get(key, "0")), endpoint[key]


# monitoring.coreos.com/v1 Endpoint (prometheus-operator API reference); no PyPI package ships its CRD schema
# without side effects (the one with generated models installs a pytest plugin into every test run).
SERVICE_MONITOR_ENDPOINT_FIELDS = {
    "port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "tlsConfig", "bearerTokenFile",
    "bearerTokenSecret", "authorization", "honorLabels", "honorTimestamps", "trackTimestampsStaleness",
    "basicAuth", "oauth2", "metricRelabelings", "relabelings", "proxyUrl", "followRedirects", "enableHttp2",
    "filterRunning"}
PROMETHEUS_DURATION = r"(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)"


def pod_specs(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for doc in docs:
        if doc["kind"] == "Pod":
            specs.append((doc["metadata"]["name"], doc["spec"]))
        elif doc["kind"] in ("Deployment", "Job"):
            specs.append((doc["metadata"]["name"], doc["spec"]["template"]["spec"]))
    return specs


def config_keys(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Every settings path of the config model -> its annotation, nested models walked."""
    keys: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        ann = field.annotation
        keys[prefix + name] = ann
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.update(config_keys(ann, f"{prefix}{name}."))
    return keys


def schema_keys(node: dict[str, Any], root: dict[str, Any], prefix: str = "") -> set[str]:
    if "$ref" in node:
        node = root["definitions"][node["$ref"].rsplit("/", 1)[1]]
    keys: set[str] = set()
    for name, sub in node.get("properties", {}).items():
        keys.add(prefix + name)
        keys |= schema_keys(sub, root, f"{prefix}{name}.")
    return keys


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return documents()


@pytest.fixture(scope="module")
def gpu_docs() -> list[dict[str, Any]]:
    return documents(gpu_values(), "llama", "inference")


# ---------------------------------------------------------------------------------------------- lint, render


@pytest.mark.parametrize("values, namespace", [(None, "default"), ("gpu", "inference"), ("everything", "inference")])
def test_chart_passes_helm_lint_strict(values, namespace):
    chosen = {None: None, "gpu": gpu_values(), "everything": merged(gpu_values(), EVERYTHING)}[values]
    for kube in KUBE_VERSIONS:
        report = helm.lint(CHART, chosen, strict=True, namespace=namespace, kube_version=f"v{kube}.0")
        assert report["errors"] == []
        assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("values, namespace", [(None, "default"), ("gpu", "inference"), ("everything", "inference")])
@pytest.mark.parametrize("kube", KUBE_VERSIONS)
def test_every_rendered_document_is_valid_kubernetes(values, namespace, kube):
    chosen = {None: None, "gpu": gpu_values(), "everything": merged(gpu_values(), EVERYTHING)}[values]
    docs = documents(chosen, "llama" if values else RELEASE, namespace)
    for doc in docs:
        validate(doc, kube)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Secret" if values is None else "Role", "ServiceAccount",
            "RoleBinding", "PodDisruptionBudget", "ClusterRole", "Job", "Pod"} <= kinds
    if values == "everything":
        assert {"Ingress", "ServiceMonitor", "NetworkPolicy"} <= kinds


def test_kubernetes_validate_cli_passes_the_gpu_example(tmp_path):
    """The command line CI users run: `kubernetes-validate --strict` on `helm template` output."""
    docs = documents(merged(gpu_values(), EVERYTHING), "llama", "inference")
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    cli = Path(sys.executable).with_name("kubernetes-validate")
    for kube in KUBE_VERSIONS:
        r = subprocess.run([str(cli), "--strict", "-k", f"{kube}.0", str(path)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        passed = r.stdout.count("passed for resource")
        assert passed == len(docs) - 1, r.stdout  # all but the ServiceMonitor (a CRD: checked above)


def test_helm_install_dry_run_accepts_the_defaults_and_the_gpu_example():
    for values, release, namespace in ((None, RELEASE, "default"), (gpu_values(), "llama", "inference")):
        release_info = install_dry_run(values, release, namespace)
        manifest = [d for d in yaml.safe_load_all(release_info["manifest"]) if d]
        assert {d["kind"] for d in manifest} >= {"Deployment", "Service", "ConfigMap", "Role"}
        assert "Authorization: Bearer" in release_info["notes"]


@pytest.mark.parametrize("values, namespace", [(None, "default"), ("gpu", "inference")])
def test_worker_manifests_lbproxy_renders_from_the_configmap_are_valid_kubernetes(values, namespace, tmp_path):
    chosen = gpu_values() if values else None
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(rendered_config(documents(chosen, "llama", namespace))))
    r = subprocess.run([sys.executable, "-m", "lbproxy", "render", str(path)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    workers = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert workers and workers[0]["kind"] == "Deployment"
    for doc in workers:
        for kube in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, kube, strict=True)


# ------------------------------------------------------------------------------- one config model for both


@pytest.mark.parametrize("values", [None, "gpu"])
def test_configmap_is_a_config_lbproxy_serves_on_kubernetes(values):
    chosen = gpu_values() if values else None
    release, namespace = ("llama", "inference") if values else (RELEASE, "default")
    docs = documents(chosen, release, namespace)
    config = parse_config(rendered_config(docs), environ={})
    assert backend_problems(config) == []
    assert config.backend.type == "kubernetes"
    assert config.name == ("llama" if values else RELEASE)
    assert not config.auth.api_keys  # keys reach the proxy from the Secret, never through the ConfigMap
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = dict(part.split("=", 1) for part in config.backend.proxy_selector.split(","))
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {"http": config.listen.port, "admin": config.admin.port}
    assert config.admin.host == "0.0.0.0"  # the kubelet probes it and the leader polls it from other pods


def test_gpu_values_describe_the_same_endpoint_as_the_lbproxy_config(gpu_docs):
    """examples/kubernetes/values-h100-a100.yaml (Helm) and h100-fallback.yaml (`lbproxy serve`) agree."""
    from_chart = parse_config(rendered_config(gpu_docs), environ={})
    direct = load_config(GPU_CONFIG, environ={})
    chart_owned = {"admin", "backend"}
    assert from_chart.model_dump(exclude=chart_owned) == direct.model_dump(exclude=chart_owned)
    assert from_chart.backend.model_dump(exclude={"proxy_selector"}) == direct.backend.model_dump(
        exclude={"proxy_selector"})
    assert manifests.render(from_chart) == manifests.render(direct)


@pytest.mark.parametrize("values_file", [CHART / "values.yaml", GPU_VALUES])
def test_values_document_without_the_proxy_block_is_an_lbproxy_config(values_file, tmp_path):
    """One document serves both: values minus `proxy:`, plus what the chart fills in, pass `lbproxy check`."""
    values = yaml.safe_load(values_file.read_text())
    del values["proxy"]
    values["name"] = values["name"] or "from-release"
    values["backend"]["type"] = "kubernetes"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    r = subprocess.run([sys.executable, "-m", "lbproxy", "check", str(path)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_schema_names_exactly_the_config_models_settings():
    schema = json.loads((CHART / "values.schema.json").read_text())
    model = config_keys(Config)
    in_schema = schema_keys(schema, schema) - {"global"}
    in_schema = {k for k in in_schema if not k.startswith("proxy")}
    chart_owned = set(json.loads((CHART / "values.chart.json").read_text())["omit"])  # the chart sets them
    assert chart_owned >= {"backend.kubeconfig", "backend.proxy_selector", "queue.worker_url"}

    def in_a_settings_model(key: str) -> bool:  # not a field of a mapping value such as worker_resources
        parent = model.get(key.rpartition(".")[0])
        return "." not in key or (isinstance(parent, type) and issubclass(parent, BaseModel))

    assert {k for k in in_schema if in_a_settings_model(k)} == set(model) - chart_owned
    strategy = schema["properties"]["scaling"]["properties"]["strategy"]["enum"]
    assert set(strategy) == set(model["scaling.strategy"].__args__)
    assert set(schema["properties"]["type"]["enum"]) <= set(model["type"].__args__)


def test_chart_readme_names_exactly_the_proxy_keys_the_schema_has():
    """charts/lbproxy/README.md's `proxy:` table is kept by hand: each key it names exists, none is missing."""
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["proxy"]["properties"]
    named: set[str] = set()
    for line in (CHART / "README.md").read_text().splitlines():
        if line.startswith("| `proxy."):
            first, *siblings = re.findall(r"`([^`]+)`", line.split("|")[1])
            parent, _, _ = first.rpartition(".")
            named |= {first, *(f"{parent}.{sibling}" for sibling in siblings)}
    for key in named:
        node: Any = {"properties": {"proxy": {"properties": schema}}}
        for part in key.removesuffix(".*").split("."):
            node = node["properties"][part]
    assert {key.split(".")[1] for key in named} == set(schema)


def uncommented_values() -> dict[str, Any]:
    """values.yaml with every lbproxy key written out, as a user uncommenting its lines would."""
    text = (CHART / "values.yaml").read_text()
    region = text.split("BEGIN generated: config", 1)[1].split("\n", 1)[1].split("# END generated: config", 1)[0]
    data: dict[str, Any] = yaml.safe_load(re.sub(r"^(\s*)# (?=\s*(?:[a-z_]+:|- ))", r"\1", region, flags=re.M))
    return data


def dotted(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        keys.add(prefix + key)
        if isinstance(value, dict) and value and prefix + key != "gpu.catalog":
            keys |= dotted(value, f"{prefix}{key}.")
    return keys


def test_values_yaml_shows_every_chart_key_and_each_default_is_lbproxys():
    """Uncommenting every line of values.yaml's lbproxy part installs, and gives lbproxy its own defaults."""
    written = uncommented_values()
    schema = json.loads((CHART / "values.schema.json").read_text())
    omitted = set(json.loads((CHART / "values.chart.json").read_text())["omit"])
    cluster_keys = {s.key for s in settings(Config) if s.backend != "local" and s.key not in omitted}
    assert dotted(written) == {k for k in cluster_keys if "." not in k or k.rpartition(".")[0] in cluster_keys}
    docs = [d for d in yaml.safe_load_all(install_dry_run(written)["manifest"]) if d]
    config = parse_config(rendered_config(docs), environ={})
    assert backend_problems(config) == []
    fragment = json.loads((CHART / "values.chart.json").read_text())
    defaults = parse_config({"name": RELEASE, "backend": {"type": "kubernetes"}}, environ={})
    for setting in settings(Config):
        if setting.section is not None or setting.key not in dotted(written) or setting.key == "backend.type":
            continue
        if fragment["values"].get(setting.key, "$default") != "$default" or setting.field.examples:
            continue  # the chart's own value, or an example where the default cannot be written (worker.args)
        got, want = config, defaults
        for part in setting.key.split("."):
            got, want = getattr(got, part), getattr(want, part)
        assert got == want, setting.key
    assert "enum" in schema["properties"]["backend"]["properties"]["type"]


# --------------------------------------------------------------------------------------- the schema refuses

BAD_VALUES = [
    ({"workers": {"max": 0}}, "/workers/max"),
    ({"workers": {"active": -1}}, "/workers/active"),
    ({"workers": {"max": "three"}}, "/workers/max"),
    ({"timeouts": {"idle": "soon"}}, "/timeouts/idle"),
    ({"timeouts": {"wait": "-5s"}}, "/timeouts/wait"),
    ({"timeouts": {"execution": "forever"}}, "/timeouts/execution"),
    ({"scaling": {"strategy": "fastest"}}, "/scaling/strategy"),
    ({"scaling": {"requests_per_worker": 0}}, "/scaling/requests_per_worker"),
    ({"limits": {"max_body_size": "30 parsecs"}}, "/limits/max_body_size"),
    ({"listen": "8080"}, "/listen"),
    ({"gpu": {"categories": ["80gb_pro"]}}, "/gpu/categories/0"),
    ({"cost": {"max_per_hour": 0}}, "/cost/max_per_hour"),
    ({"cost": {"budget": 80}}, "/cost"),
    ({"gpu": {"cuda_versions": ["twelve"]}}, "/gpu/cuda_versions/0"),
    ({"expose_ports": ["8000/udp"]}, "/expose_ports/0"),
    ({"worker": {"imag": "vllm/vllm-openai"}}, "/worker"),
    ({"worker": {"port": 70000}}, "/worker/port"),
    ({"worker": {"env": {"1BAD": "x"}}}, "invalid propertyName '1BAD'"),
    ({"workerz": {"max": 3}}, "workerz"),
    ({"name": "My_Endpoint"}, "/name"),
    ({"type": "batch"}, "/type"),
    ({"queue": {"worker_url": "http://x:1"}}, "/queue"),
    ({"proxy": {"queue": {"workerApiPort": 0}}}, "/proxy/queue/workerApiPort"),
    ({"backend": {"type": "local"}}, "/backend/type"),
    ({"backend": {"proxy_selector": "app=x"}}, "/backend"),
    ({"backend": {"tolerations": [{"key": "x", "operator": "Maybe"}]}}, "/backend/tolerations/0/operator"),
    ({"timeouts": {"ttl": 5}}, "/timeouts/ttl"),
    ({"timeouts": {"execution": 3}}, "/timeouts/execution"),
    ({"workers": {"concurrency": -1}}, "/workers/concurrency"),
    ({"limits": {"max_queue": -1}}, "/limits/max_queue"),
    ({"limits": {"max_body_size": 0}}, "/limits/max_body_size"),
    ({"auth": {"api_keys": ["two words"]}}, "/auth/api_keys/0"),
    ({"worker": {"health_path": "ping"}}, "/worker/health_path"),
    ({"worker": {"args": []}}, "/worker/args"),
    ({"worker": {"env": {"A": None}}}, "/worker/env/A"),
    ({"gpu": {"catalog": {"my-gpu": {"memory_gb": 24}}}}, "/gpu/catalog/my-gpu"),
    ({"gpu": {"catalog": {"My_GPU": {"memory_gb": 24}}}}, "invalid propertyName 'My_GPU'"),
    ({"gpu": {"catalog": {"80gb": {"memory": 80}}}}, "/gpu/catalog/80gb"),
    ({"placement": {"network_volume": ""}}, "/placement/network_volume"),
    ({"backend": {"worker_resources": {"requests": {"cpu": 0.5}}}}, "/backend/worker_resources/requests/cpu"),
    ({"proxy": {"replicas": 0}}, "/proxy/replicas"),
    ({"proxy": {"service": {"type": "Internal"}}}, "/proxy/service/type"),
    ({"proxy": {"logLevel": "verbose"}}, "/proxy/logLevel"),
    ({"proxy": {"serviceMonitor": {"interval": "15 seconds"}}}, "/proxy/serviceMonitor/interval"),
    ({"proxy": {"resourcez": {}}}, "/proxy"),
]


@pytest.mark.parametrize("bad, where", BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_helm_install_rejects_bad_values_before_creating_anything(bad, where):
    with pytest.raises(helm.HelmError) as refused:
        install_dry_run(merged({}, bad))
    message = str(refused.value)
    assert "values don't meet the specifications of the schema" in message
    assert where in message, message


CHART_ONLY_PATHS = ("/proxy", "/backend", "/queue")  # refused by the chart's schema alone


@pytest.mark.parametrize("bad, where", [b for b in BAD_VALUES if not b[1].startswith(CHART_ONLY_PATHS)],
                         ids=[w for _, w in BAD_VALUES if not w.startswith(CHART_ONLY_PATHS)])
def test_what_the_schema_rejects_lbproxy_rejects_too(bad, where):
    """The schema is no stricter than the config model on lbproxy's own keys (it only refuses earlier)."""
    config = merged({"name": "x", "worker": {"image": "i"}, "backend": {"type": "kubernetes"}}, bad)
    with pytest.raises(ConfigError):
        parse_config(config, environ={})


GOOD_VALUES = [
    {"timeouts": {"idle": "1h30m", "wait": 90, "init": "500ms", "shutdown": "45s", "ttl": "7d"}},
    {"timeouts": {"execution": "off"}},
    {"timeouts": {"execution": 0}},
    {"timeouts": {"execution": False}},
    {"timeouts": {"execution": "7d"}},
    {"limits": {"max_body_size": "1GiB", "max_queue": 0}},
    {"limits": {"max_body_size": 1024}},
    {"listen": "[::]:8080", "admin": ":9091"},
    {"gpu": {"categories": ["my-gpu"], "catalog": {"my-gpu": {
        "types": ["X1"], "products": ["NVIDIA-X1"], "memory_gb": 24, "flex_price_per_s": 0.0001,
        "active_price_per_s": 0.0001}}}},
    {"gpu": {"cuda_versions": [12.4, "11"]}},
    {"worker": {"env": {"A": 1, "B": True, "C": "x"}}},
    {"expose_ports": ["8888/HTTP", "5432/tcp"]},
    {"scaling": {"strategy": "request_count", "requests_per_worker": 2}},
    {"gpu": {"categories": ["80gb"], "catalog": {"80gb": {"flex_price_per_s": 0.001}}}},
    {"worker": {"args": "--model org/m --port 8000", "env": {"EMPTY": ""}}},
    {"backend": {"worker_resources": {"requests": {"cpu": "500m", "memory": "8Gi"}, "limits": {"cpu": 4}}}},
    {"auth": {"api_keys": []}},
]


@pytest.mark.parametrize("good", GOOD_VALUES)
def test_schema_accepts_what_lbproxy_accepts(good):
    install_dry_run(merged({}, good))
    parse_config(merged({"name": "x", "worker": {"image": "i"}, "backend": {"type": "kubernetes"}}, good),
                 environ={})


@pytest.mark.parametrize("values, namespace, message", [
    ({"backend": {"namespace": "elsewhere"}}, "default", "backend.namespace"),
    ({"admin": "127.0.0.1:9090"}, "default", "is loopback"),
    ({"listen": "0.0.0.0:9090"}, "default", "must not use the proxy's port"),
    ({"proxy": {"fullnameOverride": RELEASE}}, "default", "worker Deployments"),
    ({"name": "llama", "gpu": {"categories": ["80gb"]}, "proxy": {"fullnameOverride": "llama-80gb"}}, "default",
     "worker Deployments"),
    ({"auth": {"api_keys": ["k1"]}, "proxy": {"apiKeys": {"existingSecret": "s"}}}, "default", "both set"),
])
def test_install_refuses_what_the_schema_cannot_express(values, namespace, message):
    with pytest.raises(helm.HelmError) as refused:
        install_dry_run(merged({}, values), namespace=namespace)
    assert message in str(refused.value)


# --------------------------------------------------------------------------------------------------- RBAC

# How each Kubernetes API method lbproxy calls is authorized, and the settings that make lbproxy call it.
_VERBS = {"read": "get", "create": "create", "replace": "update", "patch": "patch", "list": "list"}
_ALWAYS, _LEADER, _SERVICES, _VOLUME, _FLASHBOOT = "always", "leader_election", "expose_ports", "volume", "flashboot"
_WHEN = {"deployment": _ALWAYS, "deployment_scale": _ALWAYS, "pod": _ALWAYS, "service": _SERVICES,
         "persistent_volume_claim": _VOLUME, "lease": _LEADER, "node": _FLASHBOOT}
_RESOURCES = {"deployment": ("apps", "deployments"), "deployment_scale": ("apps", "deployments/scale"),
              "pod": ("", "pods"), "service": ("", "services"),
              "persistent_volume_claim": ("", "persistentvolumeclaims"),
              "lease": ("coordination.k8s.io", "leases"), "node": ("", "nodes")}


def _api_method(name: str, watched: bool) -> tuple[str, str, str, str]:
    """`read_namespaced_deployment_without_preload_content` -> (when, group, resource, verb)."""
    match = re.fullmatch(r"(read|create|replace|patch|list)_(?:namespaced_)?(\w+?)(?:_without_preload_content)?",
                         name)
    assert match, f"lbproxy calls {name}: teach this test (and the chart's Role) about it"
    action, kind = match.groups()
    group, resource = _RESOURCES[kind]
    verb = "watch" if watched else _VERBS[action]
    return _WHEN[kind], group, resource, verb


def backend_calls() -> set[tuple[str, str, str, str]]:
    """Every Kubernetes call of lbproxy's backend: client.py's own, and those of the library's Lease lock."""
    calls = set()
    tree = ast.parse((ROOT / "lbproxy" / "kube" / "client.py").read_text())
    watched = {n.args[0].attr for n in ast.walk(tree) if isinstance(n, ast.Call)
               and isinstance(n.func, ast.Attribute) and n.func.attr == "stream" and n.args
               and isinstance(n.args[0], ast.Attribute)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and node.value.attr in ("apps", "core", "coordination")):
            calls.add(_api_method(node.attr, node.attr in watched))
    lock = Path(kubernetes.__file__).parent / "aio" / "leaderelection" / "resourcelock" / "leaselock.py"
    for name in re.findall(r"api_instance\.(\w+)\(", lock.read_text()):
        calls.add(_api_method(name, False))
    return calls


def role_rules(docs: list[dict[str, Any]], kind: str = "Role") -> set[tuple[str, str, str]]:
    rules = set()
    for doc in docs:
        if doc["kind"] == kind and doc["metadata"]["name"].endswith(("-proxy", "-flashboot")):
            for rule in doc["rules"]:
                rules |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return rules


def test_backend_calls_are_the_ones_the_chart_knows():
    calls = backend_calls()
    assert {(g, r, v) for when, g, r, v in calls if when == _ALWAYS} == {
        ("apps", "deployments", "get"), ("apps", "deployments", "create"), ("apps", "deployments", "update"),
        ("apps", "deployments/scale", "patch"), ("", "pods", "list"), ("", "pods", "watch"), ("", "pods", "patch")}
    assert {(when, g, r, v) for when, g, r, v in calls if when != _ALWAYS} == {
        (_SERVICES, "", "services", "get"), (_SERVICES, "", "services", "create"),
        (_SERVICES, "", "services", "update"), (_VOLUME, "", "persistentvolumeclaims", "get"),
        (_LEADER, "coordination.k8s.io", "leases", "get"), (_LEADER, "coordination.k8s.io", "leases", "create"),
        (_LEADER, "coordination.k8s.io", "leases", "update"), (_LEADER, "coordination.k8s.io", "leases", "patch"),
        (_FLASHBOOT, "", "nodes", "list"), (_FLASHBOOT, "", "nodes", "patch")}


@pytest.mark.parametrize("values, enabled", [
    (None, {_ALWAYS, _LEADER, _FLASHBOOT}),
    ("gpu", {_ALWAYS, _LEADER, _FLASHBOOT, _SERVICES, _VOLUME}),
    ({"flashboot": False, "backend": {"leader_election": False}}, {_ALWAYS}),
])
def test_proxy_rbac_covers_exactly_the_backends_calls(values, enabled):
    chosen = gpu_values() if values == "gpu" else values
    docs = documents(chosen, "llama", "inference" if values == "gpu" else "default")
    expected = {(g, r, v) for when, g, r, v in backend_calls() if when in enabled}
    namespaced = {rule for rule in expected if rule[1] != "nodes"}
    assert role_rules(docs) == namespaced
    assert role_rules(docs, "ClusterRole") == expected - namespaced
    assert len([d for d in docs if d["kind"] == "ClusterRoleBinding"]) == (1 if _FLASHBOOT in enabled else 0)


def test_rbac_names_exactly_the_objects_lbproxy_creates(gpu_docs):
    config = parse_config(rendered_config(gpu_docs), environ={})
    role = one(gpu_docs, "Role", "llama-proxy")
    named = {(rule["resources"][0], v): set(rule.get("resourceNames", ["*"])) for rule in role["rules"]
             for v in rule["verbs"]}
    pools = {pool.name for pool in manifests.pools(config)}
    assert pools == {"llama-80gb-pro", "llama-80gb"}
    assert named[("deployments", "get")] == named[("deployments", "update")] == pools
    assert named[("deployments/scale", "patch")] == pools
    assert named[("services", "get")] == {manifests.service(config)["metadata"]["name"]}
    assert named[("persistentvolumeclaims", "get")] == {"llama-weights"}
    assert named[("leases", "get")] == {f"lbproxy-{config.name}"}  # server.py's lease name
    assert named[("deployments", "create")] == named[("leases", "create")] == {"*"}  # creates carry no name
    binding = one(gpu_docs, "RoleBinding", "llama-proxy")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "llama-proxy", "namespace": "inference"}]


@pytest.mark.parametrize("endpoint", ["a-rather-long-endpoint-name-for-a-model-server", "a" * 42 + "-bbbbbbb"])
def test_long_pool_names_in_rbac_match_lbproxys_hashed_names(endpoint):
    values = {"name": endpoint, "gpu": {"categories": ["141gb-pro", "80gb"]}}
    docs = documents(values)
    config = parse_config(rendered_config(docs), environ={})
    role = one(docs, "Role", "my-endpoint-proxy")
    scale = next(r for r in role["rules"] if r["resources"] == ["deployments/scale"])
    assert set(scale["resourceNames"]) == {p.name for p in manifests.pools(config)}
    assert all(len(n) <= 52 for n in scale["resourceNames"])


# --------------------------------------------------------------------- the chart's helpers = lbproxy's code

# The chart computes two things lbproxy computes too: the worker Deployments' names (the Role grants exactly
# those) and seconds from a duration (the pod's termination grace). A probe template renders the real helpers
# over many inputs in one `helm template`, compared with lbproxy.kube.manifests and lbproxy.durations.
PROBE = """\
{{- $inputs := .Files.Get "probe.json" | fromJson -}}
{{- $seconds := list -}}
{{- range $inputs.durations }}{{ $seconds = append $seconds (include "lbproxy.seconds" . | int) }}{{ end -}}
{{- $pools := list -}}
{{- range $inputs.endpoints -}}
{{- $root := dict "Values" (dict "name" .name "gpu" (dict "categories" .categories)) "Release" $.Release -}}
{{- $pools = append $pools (include "lbproxy.workerDeployments" $root | fromJsonArray) -}}
{{- end -}}
apiVersion: v1
kind: ConfigMap
metadata: {name: probe}
data:
  seconds: {{ toJson $seconds | quote }}
  pools: {{ toJson $pools | quote }}
"""

PROBE_DURATIONS = [30, "30", "500ms", "5s", " 2M ", "10m", "24h", "7d", "1h30m", "1.5s", ".5s", "5.", "0", 0, 0.2,
                   2.5, "1d12h", "100ms500ms", "59.999s", "1ms", "365d"]
PROBE_ENDPOINTS = [
    ("llama", []),
    ("llama", ["80gb-pro", "80gb"]),
    ("a-rather-long-endpoint-name-for-a-model-server", ["141gb-pro", "80gb"]),
    ("a" * 42 + "-bbbbbbb", ["80gb"]),  # cut at 43 characters ends in '-'
    ("e" * 42, ["24gb"]),  # 47 characters: kept
    ("e" * 47, ["24gb"]),  # 52 characters: kept
    ("e" * 48, ["24gb"]),  # 53 characters: hashed
    ("n" * 52, []),
    ("n" * 53, []),  # no category, still too long for pod names: hashed
    ("x" * 63, ["16gb", "180gb"]),
]


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    chart = tmp_path_factory.mktemp("probe") / "lbproxy"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "probe.yaml").write_text(PROBE)
    endpoints = [{"name": name, "categories": categories} for name, categories in PROBE_ENDPOINTS]
    (chart / "probe.json").write_text(json.dumps({"durations": PROBE_DURATIONS, "endpoints": endpoints}))
    with helm.Chart.load(chart) as loaded:
        files = loaded.render(None, name=RELEASE, namespace="default", is_install=True)
    data: dict[str, str] = yaml.safe_load(files["lbproxy/templates/probe.yaml"])["data"]
    return {key: json.loads(value) for key, value in data.items()}


def test_chart_seconds_are_lbproxys_durations_rounded_up(probed):
    assert probed["seconds"] == [math.ceil(parse_duration(value)) for value in PROBE_DURATIONS]


def test_chart_worker_deployment_names_are_lbproxys_pool_names(probed):
    expected = [[pool.name for pool in manifests.pools(parse_config(
        {"name": name, "gpu": {"categories": categories}, "backend": {"type": "kubernetes"}}, environ={}))]
        for name, categories in PROBE_ENDPOINTS]
    assert probed["pools"] == expected
    hashed = hashlib.sha256(("n" * 53).encode()).hexdigest()[:8]
    assert expected[8] == ["n" * 43 + "-" + hashed]  # the case the chart once got wrong


def test_chart_falls_back_to_lbproxys_own_defaults():
    """Where a template reads a config key the values leave out, it assumes lbproxy's default."""
    model = parse_config({"name": RELEASE}, environ={})
    docs = documents({"listen": None, "workers": None})
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in spec["containers"][0]["ports"]}
    assert ports["http"] == model.listen.port
    assert spec["terminationGracePeriodSeconds"] == 5 + math.ceil(model.timeouts.shutdown) + 10
    config = parse_config(rendered_config(docs), environ={})
    assert "listen" not in rendered_config(docs) and config.listen == model.listen
    kinds = {d["kind"] for d in docs}
    assert ("ClusterRole" in kinds) is model.flashboot
    assert any(r["resources"] == ["leases"] for r in one(docs, "Role", f"{RELEASE}-proxy")["rules"]) is \
        model.backend.leader_election
    text = notes({"workers": None})
    assert f"{model.workers.active} to {model.workers.max} worker(s)" in text


# ----------------------------------------------------------------------------- conventions and the proxy pod


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return selector.get("matchLabels", {}).items() <= labels.items() and not selector.get("matchExpressions")


def test_worker_pods_accept_only_the_proxy_pods_and_the_proxy_policy_is_opt_in(default_docs):
    policy = one(default_docs, "NetworkPolicy", f"{RELEASE}-proxy-workers")
    assert [d for d in default_docs if d["kind"] == "NetworkPolicy"] == [policy]  # no proxy policy by default
    config = parse_config(rendered_config(default_docs), environ={})
    worker_pods = [d["spec"]["template"]["metadata"]["labels"] for d in manifests.render(config)]
    proxy_pods = one(default_docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert worker_pods and all(matches(spec["podSelector"], labels) for labels in worker_pods)
    assert not matches(spec["podSelector"], proxy_pods)
    [rule] = spec["ingress"]
    assert "ports" not in rule  # the worker's port and its health port
    [peer] = rule["from"]
    assert set(peer) == {"podSelector"} and matches(peer["podSelector"], proxy_pods)
    assert not any(matches(peer["podSelector"], labels) for labels in worker_pods)


def test_the_proxy_policy_lets_anyone_reach_the_endpoint_and_only_replicas_and_adminfrom_the_admin_port():
    docs = documents(merged(gpu_values(), EVERYTHING), "llama", "inference")
    policy = one(docs, "NetworkPolicy", "llama-proxy")
    proxy_pods = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert matches(policy["spec"]["podSelector"], proxy_pods)
    rules = {rule["ports"][0]["port"]: rule.get("from") for rule in policy["spec"]["ingress"]}
    assert rules["http"] == EVERYTHING["proxy"]["networkPolicy"]["httpFrom"]
    replicas, *extra = rules["admin"]
    assert matches(replicas["podSelector"], proxy_pods) and extra == EVERYTHING["proxy"]["networkPolicy"]["adminFrom"]
    assert set(rules) == {"http", "admin"}  # a load balancer has no worker API
    workers = one(docs, "NetworkPolicy", "llama-proxy-workers")["spec"]["ingress"][0]["from"]
    assert workers[1:] == EVERYTHING["proxy"]["networkPolicy"]["workersFrom"]
    off = documents(merged(gpu_values(), {"proxy": {"networkPolicy": {"workers": False}}}), "llama", "inference")
    assert not [d for d in off if d["kind"] == "NetworkPolicy"]


def test_everything_carries_the_standard_labels_and_never_the_worker_label():
    docs = documents(merged(gpu_values(), EVERYTHING), "llama", "inference")
    for doc in docs:
        labels = doc["metadata"]["labels"]
        assert labels["helm.sh/chart"] == "lbproxy-0.1.0"
        assert labels["app.kubernetes.io/name"] == "lbproxy"
        assert labels["app.kubernetes.io/instance"] == "llama"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == __version__
        # lbproxy.io/endpoint selects the worker pods: a proxy object with it would be taken for a worker.
        spec = doc.get("spec", {})
        for selected in (labels, spec.get("selector", {}), spec.get("selector", {}).get("matchLabels", {}),
                         spec.get("template", {}).get("metadata", {}).get("labels", {})):
            assert manifests.ENDPOINT_LABEL not in selected, doc["metadata"]["name"]


def test_only_the_proxy_pods_match_the_proxy_selectors():
    docs = documents(merged(gpu_values(), EVERYTHING), "llama", "inference")
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    for name, _ in pod_specs(docs):
        owner = next(d for d in docs if d["metadata"]["name"] == name and d["kind"] in ("Deployment", "Job", "Pod"))
        template_labels = (owner["metadata"]["labels"] if owner["kind"] == "Pod"
                           else owner["spec"]["template"]["metadata"]["labels"])
        matches = selector.items() <= template_labels.items()
        assert matches == (name == "llama-proxy"), name  # the hook Job and the test Pod are no replicas
    for service in (d for d in docs if d["kind"] == "Service"):
        assert service["spec"]["selector"] == selector
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector


def test_names_stay_within_63_characters():
    release = "r" * 53  # Helm's longest release name
    for values in (None, {"name": "endpoint"}, {"name": "endpoint", "proxy": {"fullnameOverride": "f" * 70}}):
        docs = documents(merged(gpu_values(), EVERYTHING) | (values or {}) | {"backend": {}}, release)
        for doc in docs:
            name = doc["metadata"]["name"]
            assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name


def test_pods_run_as_non_root_with_a_read_only_root_and_no_capabilities(gpu_docs):
    specs = pod_specs(gpu_docs)
    assert {name for name, _ in specs} == {"llama-proxy", "llama-proxy-cleanup", "llama-proxy-test"}
    for name, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 10001, name  # the Dockerfile's USER
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert "resources" in container, name


def test_proxy_deployment_fits_what_lbproxy_does_on_kubernetes(default_docs):
    deployment = one(default_docs, "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert deployment["spec"]["replicas"] == 2
    assert container["image"] == f"lbproxy:{__version__}"
    assert container["args"][:2] == ["serve", "/etc/lbproxy/config.yaml"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == "/etc/lbproxy"
    # The root filesystem is read-only: the cost totals' state file needs a writable data directory.
    data = next(m for m in container["volumeMounts"] if m["name"] == "data")
    assert {"name": "LBPROXY_DATA_DIR", "value": data["mountPath"]} in container["env"]
    assert next(v for v in spec["volumes"] if v["name"] == "data")["emptyDir"] == {"sizeLimit": "16Mi"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["LBPROXY_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "my-endpoint-proxy-api-keys",
                                                                     "key": "api-keys"}
    assert spec["serviceAccountName"] == "my-endpoint-proxy"
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    # SIGTERM: preStop pause, then timeouts.shutdown (30s default) for in-flight requests, then a margin.
    assert spec["terminationGracePeriodSeconds"] == 5 + 30 + 10


@pytest.mark.parametrize("shutdown, grace", [("1m", 75), ("90", 105), ("1m30s", 105), ("500ms", 16), ("0", 15),
                                             (0, 15), (2.5, 18)])
def test_termination_grace_follows_timeouts_shutdown(shutdown, grace):
    deployment = one(documents({"timeouts": {"shutdown": shutdown}}), "Deployment")
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == grace


def test_a_config_change_rolls_the_proxy_and_nothing_else_does():
    def checksum(values: dict[str, Any] | None) -> str:
        annotations = one(documents(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return str(annotations["checksum/config"])

    assert checksum(None) == checksum(None)
    assert checksum({"workers": {"max": 5}}) != checksum(None)
    assert checksum({"proxy": {"replicas": 3}}) == checksum(None)


def test_api_keys_go_to_a_secret_never_to_the_configmap():
    docs = documents({"auth": {"api_keys": ["key-one", "key-two"], "forward_authorization": True}})
    secret = one(docs, "Secret")
    assert secret["data"]["api-keys"] == "a2V5LW9uZSxrZXktdHdv"  # base64 of "key-one,key-two"
    config_text = one(docs, "ConfigMap")["data"]["config.yaml"]
    assert "key-one" not in config_text
    assert parse_config(yaml.safe_load(config_text), environ={}).auth.forward_authorization is True
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/api-keys" in annotations  # new keys roll the proxy (env is read at start)


def test_an_existing_secret_is_referenced_not_rendered():
    docs = documents({"proxy": {"apiKeys": {"existingSecret": "team-keys", "existingSecretKey": "keys"}}})
    assert not [d for d in docs if d["kind"] == "Secret"]
    env = {e["name"]: e for e in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LBPROXY_API_KEYS"]["valueFrom"]["secretKeyRef"] == {"name": "team-keys", "key": "keys"}


def test_without_keys_a_key_is_generated_or_the_endpoint_is_open_with_a_warning():
    generated = one(documents(), "Secret")
    assert len(generated["data"]["api-keys"]) > 40
    open_docs = documents({"proxy": {"apiKeys": {"generate": False}}})
    assert not [d for d in open_docs if d["kind"] == "Secret"]
    env = one(open_docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert "LBPROXY_API_KEYS" not in {e["name"] for e in env}
    assert "WARNING: no API key" in notes({"proxy": {"apiKeys": {"generate": False}}})


def test_optional_objects_appear_only_when_asked_for(default_docs):
    kinds = [d["kind"] for d in default_docs]
    assert "Ingress" not in kinds and "ServiceMonitor" not in kinds
    assert sum(1 for d in default_docs if d["kind"] == "ConfigMap") == 1  # no dashboard
    assert kinds.count("PodDisruptionBudget") == 1
    no_rbac = documents({"proxy": {"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mine"}}})
    assert not {"Role", "RoleBinding", "ClusterRole", "ServiceAccount", "Job"} & {d["kind"] for d in no_rbac}
    assert one(no_rbac, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"


def test_ingress_and_service_monitor_reach_the_right_ports(gpu_docs):
    ingress = one(gpu_docs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "llama-proxy", "port": {"name": "http"}}
    monitor = one(gpu_docs, "ServiceMonitor")
    admin = next(d for d in gpu_docs if d["kind"] == "Service" and d["metadata"]["name"] == "llama-proxy-admin")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= admin["metadata"]["labels"].items()
    public = one(gpu_docs, "Service", "llama-proxy")
    assert not monitor["spec"]["selector"]["matchLabels"].items() <= public["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0] | {"port": "admin", "path": "/metrics"} == monitor["spec"]["endpoints"][0]
    assert [p["name"] for p in admin["spec"]["ports"]] == ["admin"]


def test_notes_say_how_to_call_and_watch_the_endpoint():
    text = notes()
    assert "kubectl -n default port-forward svc/my-endpoint-proxy 8080:80" in text
    assert "kubectl -n default get secret my-endpoint-proxy-api-keys" in text
    assert 'curl -i -H "Authorization: Bearer $API_KEY" $ENDPOINT/' in text
    assert "svc/my-endpoint-proxy-admin 9090:9090" in text
    assert "/status" in text and "/metrics" in text
    assert "helm uninstall my-endpoint" in text
    gpu = notes(gpu_values(), "llama", "inference")
    assert "export ENDPOINT=https://llama.example.com" in gpu
    assert "get secret llama-api-keys" in gpu and "GPU categories 80gb-pro, 80gb" in gpu


def test_notes_say_the_proxies_are_ready_without_a_worker():
    """/readyz (the readiness probe) answers 200 unless stopping; NOTES must not promise a wait for workers."""
    text = notes({"workers": {"active": 2, "max": 3}})
    assert "The proxies are Ready as soon as they run (/readyz: 200 unless stopping)" in text
    assert "kubectl -n default get pods -l lbproxy.io/endpoint=my-endpoint -w" in text
    assert "once a worker is ready" not in text
    assert "get pods -l" not in notes()  # workers.active: 0, nothing starts
    probe = one(documents(), "Deployment")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["path"] == "/readyz"  # not ?require_worker=1


def test_uninstall_hook_deletes_the_workers_lbproxy_created(default_docs):
    job = one(default_docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"
    container = job["spec"]["template"]["spec"]["containers"][0]
    script = container["args"][0]
    compile(script, "cleanup", "exec")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env == {"NAMESPACE": "default", "ENDPOINT": RELEASE}
    assert f'"{manifests.ENDPOINT_LABEL}={{endpoint}}"' in script
    from kubernetes import client

    for api, method in re.findall(r"client\.(\w+)\(\)\.(\w+)", script):
        assert hasattr(getattr(client, api), method), method
    role = one(default_docs, "Role", "my-endpoint-proxy-cleanup")
    assert {v for rule in role["rules"] for v in rule["verbs"]} == {"deletecollection", "delete"}
    assert "Job" not in {d["kind"] for d in documents({"proxy": {"cleanupOnUninstall": {"enabled": False}}})}


# ---------------------------------------------------------------------------------------------- dashboard


def test_grafana_dashboard_shows_the_metrics_lbproxy_exports(gpu_docs):
    dashboard = json.loads((CHART / "dashboards" / "lbproxy.json").read_text())
    configmap = one(gpu_docs, "ConfigMap", "llama-proxy-dashboard")
    assert json.loads(configmap["data"]["lbproxy.json"]) == dashboard
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("requests by status", "latency percentiles", "queue length", "queue wait", "workers by state",
                  "cold starts", "scale events", "cost rate", "spent", "billing phase", "spend by phase",
                  "capped"):
        assert topic in titles
    metrics = Metrics("x")
    metrics.watch(lambda: (0, 0, {"ready": 1}), lambda: True)
    metrics.observe_request(200, 0.1)
    metrics.observe_wait(0.1)
    metrics.scaled("up", "load")
    metrics.cold_start.labels("x").observe(1)
    metrics.worker_exits.labels("x").inc()
    metrics.watch_cost(lambda: ([("24gb", "flex", "busy", 2.0)], [("24gb", "flex", 0.0004)], 0.68, 1), lambda: False)
    exported = set(re.findall(r"^(lbproxy_\w+?)(?:\{| )", metrics.render().decode(), flags=re.M))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\blbproxy_\w+", expr)}
    assert used and used <= exported, used - exported
    assert {"lbproxy_requests_total", "lbproxy_workers", "lbproxy_scale_events_total", "lbproxy_cost_dollars_total",
            "lbproxy_worker_seconds_total", "lbproxy_cost_rate_dollars_per_hour", "lbproxy_cold_starts_total",
            "lbproxy_scaling_capped"} <= used


def test_packaged_chart_ships_the_dashboard_and_renders_like_the_directory(tmp_path):
    archive = helm.package(CHART, destination=tmp_path)
    assert Path(archive).name == "lbproxy-0.1.0.tgz"
    values = {"proxy": {"grafanaDashboard": {"enabled": True}}}
    with helm.Chart.load(archive) as packaged:
        files = packaged.render(values, name=RELEASE, namespace="default", is_install=True)
        assert "README.md" in {f["name"] for f in packaged.files}
    from_archive = [d for path, text in files.items() if not path.endswith("NOTES.txt")
                    for d in yaml.safe_load_all(text) if d]
    dashboard = one(from_archive, "ConfigMap", "my-endpoint-proxy-dashboard")
    assert json.loads(dashboard["data"]["lbproxy.json"])["title"] == "lbproxy"
