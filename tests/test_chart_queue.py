"""The Helm chart for ``type: queue`` endpoints: the worker API's Service and key, the job store (a Secret for a
PostgreSQL URL, a volume for SQLite), and SQLite refused with several replicas. Checked as tests/test_chart.py
checks the chart: Helm's own library renders it, kubernetes-validate checks the documents, lbproxy parses the
config and renders the worker Deployments from it.
"""

from __future__ import annotations

import helm_python as helm
import pytest

from lbproxy.checks import backend_problems
from lbproxy.config import parse_config
from lbproxy.kube import manifests

from .test_chart import (
    KUBE_VERSIONS,
    RELEASE,
    documents,
    install_dry_run,
    matches,
    notes,
    one,
    rendered_config,
    role_rules,
    validate,
)

SQLITE = {"type": "queue", "proxy": {"replicas": 1}}
POSTGRES = {"type": "queue", "proxy": {"queue": {"storeSecret": {"name": "jobs-db"}}}}
STORE_URL = "postgresql://lbproxy:pw@db.example.internal:5432/jobs"


def _proxy_container(docs: list[dict]) -> dict:
    return one(docs, "Deployment", f"{RELEASE}-proxy")["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("values", [SQLITE, POSTGRES], ids=["sqlite", "postgresql"])
def test_queue_releases_render_valid_kubernetes_and_a_config_lbproxy_serves(values):
    docs = documents(values)
    for version in KUBE_VERSIONS:
        for doc in docs:
            validate(doc, version)
    env = {"LBPROXY_QUEUE_STORE": STORE_URL} if values is POSTGRES else {}
    config = parse_config(rendered_config(docs), environ=env)
    assert config.type == "queue" and backend_problems(config) == []
    assert str(config.queue.worker_listen) == "0.0.0.0:8081"
    install_dry_run(values)


def test_worker_pods_get_their_key_from_the_chart_s_secret_and_reach_its_worker_api_service():
    docs = documents(POSTGRES)
    config = parse_config(rendered_config(docs), environ={"LBPROXY_QUEUE_STORE": STORE_URL})
    secret = one(docs, "Secret", f"{RELEASE}-proxy-worker-key")
    service = one(docs, "Service", f"{RELEASE}-proxy-worker-api")
    assert service["spec"]["sessionAffinity"] == "ClientIP"
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8081 and port["targetPort"] == "worker-api"
    container = _proxy_container(docs)
    assert {"name": "worker-api", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    env = {e["name"]: e for e in container["env"]}
    assert env["LBPROXY_WORKER_KEY"]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"],
                                                                       "key": "worker-key"}
    assert env["LBPROXY_QUEUE_STORE"]["valueFrom"]["secretKeyRef"] == {"name": "jobs-db", "key": "store-url"}
    (worker,) = manifests.render(config)
    for version in KUBE_VERSIONS:
        validate(worker, version)
    worker_env = {e["name"]: e for e in worker["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert worker_env["RUNPOD_AI_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"],
                                                                             "key": manifests.WORKER_KEY}
    assert worker_env["RUNPOD_WEBHOOK_PING"]["value"] == (
        f"http://{RELEASE}-proxy-worker-api.default.svc:8081/v2/{RELEASE}/ping/$(RUNPOD_POD_ID)")
    assert secret["data"]["worker-key"] not in str(worker)


def test_the_proxy_policy_opens_the_worker_api_to_this_endpoint_s_worker_pods_only():
    docs = documents({**POSTGRES, "proxy": {**POSTGRES["proxy"], "networkPolicy": {"proxy": True}}})
    config = parse_config(rendered_config(docs), environ={"LBPROXY_QUEUE_STORE": STORE_URL})
    (worker,) = manifests.render(config)
    worker_pod = worker["spec"]["template"]["metadata"]["labels"]
    proxy_pod = one(docs, "Deployment", f"{RELEASE}-proxy")["spec"]["template"]["metadata"]["labels"]
    rules = {rule["ports"][0]["port"]: rule.get("from") for rule in
             one(docs, "NetworkPolicy", f"{RELEASE}-proxy")["spec"]["ingress"]}
    [peer] = rules["worker-api"]
    assert matches(peer["podSelector"], worker_pod) and not matches(peer["podSelector"], proxy_pod)
    assert rules["http"] is None  # from anywhere
    for version in KUBE_VERSIONS:
        for doc in docs:
            validate(doc, version)


def test_sqlite_keeps_its_file_on_a_claim_and_the_proxy_recreated_not_rolled():
    docs = documents(SQLITE)
    claim = one(docs, "PersistentVolumeClaim", f"{RELEASE}-proxy-queue")
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    deployment = one(docs, "Deployment", f"{RELEASE}-proxy")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two processes on one SQLite file
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in _proxy_container(docs)["env"]}
    assert env["LBPROXY_DATA_DIR"] == "/var/lib/lbproxy"
    postgres = documents(POSTGRES)
    assert not [d for d in postgres if d["kind"] == "PersistentVolumeClaim"]
    assert one(postgres, "Deployment", f"{RELEASE}-proxy")["spec"]["strategy"]["type"] == "RollingUpdate"


@pytest.mark.parametrize("values, message", [
    ({"type": "queue"}, "cannot serve proxy.replicas: 2"),
    ({"type": "queue", "proxy": {"replicas": 3}, "queue": {"store": "sqlite:///var/lib/lbproxy/q.db"}},
     "cannot serve proxy.replicas: 3"),
    ({"type": "queue", "queue": {"store": "postgresql://u:secret@db/jobs"}}, "holds a password"),
])
def test_install_refuses_sqlite_with_several_replicas_and_a_password_in_the_configmap(values, message):
    with pytest.raises(helm.HelmError) as refused:
        install_dry_run(values)
    assert message in str(refused.value)
    if "secret" in str(values):
        assert "u:secret@" not in str(refused.value)


def test_queue_endpoints_need_no_more_rbac_than_load_balancer_ones():
    assert role_rules(documents(POSTGRES)) == role_rules(documents(None))
    assert not [d for d in documents(None) if d["kind"] == "Service" and d["metadata"]["name"].endswith("worker-api")]


def test_notes_show_how_to_submit_a_job_and_warn_when_sqlite_jobs_die_with_the_pod():
    text = notes(POSTGRES)
    assert f"$ENDPOINT/v2/{RELEASE}/run" in text and "PostgreSQL store every replica shares" in text
    assert "/v1/chat/completions" not in text
    ephemeral = notes({"type": "queue", "proxy": {"replicas": 1, "queue": {"persistence": {"enabled": False}}}})
    assert "jobs are lost with the proxy pod" in ephemeral
    assert f"PersistentVolumeClaim {RELEASE}-proxy-queue" in notes(SQLITE)
    assert "/v1/chat/completions" in notes(None)
