"""The worker manifests for the kubernetes backend, as plain dicts. Pure: ``lbproxy render`` prints them.

One Deployment per GPU category ("worker pool"), in preference order, so that each pod's category, and so
its price, is known and the controller can fall back from one category to the next by scaling pools.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from .. import __version__
from ..config import Config
from ..queue.sdk_env import pod_env
from .placement import node_affinity

ENDPOINT_LABEL = "lbproxy.io/endpoint"
POOL_LABEL = "lbproxy.io/pool"
DRAINING_ANNOTATION = "lbproxy.io/draining"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
TEMPLATE_HASH = "lbproxy.io/template-hash"
DEFAULT_POOL = "any"
WORKER_KEY = "worker-key"  # the key of queue.worker_key_secret that worker pods get as RUNPOD_AI_API_KEY
PRESTOP_SECONDS = 5  # lets every proxy replica see the pod terminating before the worker stops listening


@dataclass(frozen=True, slots=True)
class Pool:
    """One worker pool: a Deployment for one GPU category (or one for any GPU)."""

    name: str  # the Deployment's name
    category: str | None
    rank: int  # 0 = first choice

    @property
    def label(self) -> str:
        return self.category or DEFAULT_POOL


def pools(config: Config) -> list[Pool]:
    cats = config.gpu.categories
    if not cats:
        return [Pool(_name(config.name, None), None, 0)]
    return [Pool(_name(config.name, c), c, i) for i, c in enumerate(cats)]


def _name(endpoint: str, category: str | None) -> str:
    name = f"{endpoint}-{category}" if category else endpoint
    if len(name) > 52:  # pod names add -<hash>-<5>; keep them a valid hostname
        name = name[:43].rstrip("-") + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


def namespace(config: Config) -> str:
    return config.backend.namespace or "default"


def common_labels(config: Config) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "lbproxy-worker",
        "app.kubernetes.io/instance": config.name,
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": "lbproxy",
        "app.kubernetes.io/version": __version__,
        ENDPOINT_LABEL: config.name,
    }


def endpoint_selector(config: Config) -> str:
    """Label selector of every worker pod of this endpoint, all pools."""
    return f"{ENDPOINT_LABEL}={config.name}"


def _container(config: Config) -> dict[str, Any]:
    w = config.worker
    health_port = w.health_port or w.port
    env: list[dict[str, Any]] = [
        {"name": "PORT", "value": str(w.port)},
        {"name": "PORT_HEALTH", "value": str(health_port)},
        {"name": "LBPROXY_WORKER_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "LBPROXY_ENDPOINT", "value": config.name},
    ]
    sdk = config.type == "queue" and config.queue.delivery == "sdk"
    if sdk:
        env += _sdk_env(config)
    else:
        env += [{"name": k, "value": v} for k, v in w.env.items()]
    ports: list[dict[str, Any]] = [{"name": "http", "containerPort": w.port, "protocol": "TCP"}]
    if health_port != w.port:
        ports.append({"name": "health", "containerPort": health_port, "protocol": "TCP"})
    for p in config.expose_ports:
        if p.port not in (w.port, health_port):  # already declared above
            ports.append({"name": f"expose-{p.port}", "containerPort": p.port, "protocol": "TCP"})
    # Quantities are strings in the API ("2", "500m", "32Gi").
    resources: dict[str, dict[str, str]] = {
        kind: {k: str(v) for k, v in values.items()} for kind, values in config.backend.worker_resources.items()
    }
    if config.workers.gpus:
        resources.setdefault("limits", {})["nvidia.com/gpu"] = str(config.workers.gpus)
    container: dict[str, Any] = {
        "name": "worker",
        "image": w.image,
        **({"args": list(w.args)} if w.args else {}),
        "env": env,
        "ports": ports,
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
    }
    if not sdk:  # an SDK worker serves no HTTP: it is ready at its first call to the worker API
        # Readiness only: lbproxy probes /ping itself and replaces workers; a liveness probe would restart a
        # worker that is still loading a model past its period.
        container["readinessProbe"] = {
            "httpGet": {"path": w.health_path, "port": health_port},
            "periodSeconds": 5,
            "failureThreshold": 2,
        }
    if resources:
        container["resources"] = resources
    if config.placement.network_volume:
        container["volumeMounts"] = [{"name": "network-volume", "mountPath": config.backend.volume_mount_path}]
    return container


def _sdk_env(config: Config) -> list[dict[str, Any]]:
    """A queue worker pod's SDK environment: its name from the downward API (RUNPOD_POD_ID, which the URLs use),
    its key from queue.worker_key_secret (never a plain value in the Deployment), the rest plain."""
    q = config.queue
    env: list[dict[str, Any]] = [
        {"name": "RUNPOD_POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "RUNPOD_AI_API_KEY", "valueFrom": {"secretKeyRef": {"name": q.worker_key_secret, "key": WORKER_KEY}}},
    ]
    values = pod_env((q.worker_url or "").rstrip("/"), config.name, q.ping_interval, config.worker.env)
    return env + [{"name": k, "value": v} for k, v in values.items()]


def grace_seconds(config: Config) -> int:
    """Stopping a pod lets its requests finish: at least the execution timeout, plus the preStop pause."""
    execution = config.timeouts.execution
    return math.ceil(execution if execution is not None else 3600) + PRESTOP_SECONDS + 5


def deployment(config: Config, pool: Pool, replicas: int = 0) -> dict[str, Any]:
    labels = {**common_labels(config), POOL_LABEL: pool.label}
    spec: dict[str, Any] = {
        "containers": [_container(config)],
        "terminationGracePeriodSeconds": grace_seconds(config),
        "enableServiceLinks": False,
    }
    affinity = node_affinity(config, pool.category)
    if affinity:
        spec["affinity"] = {"nodeAffinity": affinity}
    if config.backend.tolerations:
        spec["tolerations"] = [dict(t) for t in config.backend.tolerations]
    if config.backend.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": n} for n in config.backend.image_pull_secrets]
    if config.placement.network_volume:
        spec["volumes"] = [{"name": "network-volume",
                            "persistentVolumeClaim": {"claimName": config.placement.network_volume}}]
    template = {"metadata": {"labels": dict(labels)}, "spec": spec}
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": pool.name,
            "namespace": namespace(config),
            "labels": labels,
            "annotations": {TEMPLATE_HASH: digest, "lbproxy.io/gpu-category": pool.label},
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {ENDPOINT_LABEL: config.name, POOL_LABEL: pool.label}},
            # lbproxy chooses which worker goes (drain, then pod-deletion-cost); a rollout must not stop
            # a serving worker first, so new pods come up before old ones go.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": template,
        },
    }


def service(config: Config) -> dict[str, Any] | None:
    """A Service selecting every worker pod, for ``expose_ports`` (direct access, e.g. WebSockets)."""
    if not config.expose_ports:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{config.name}-workers", "namespace": namespace(config),
                     "labels": common_labels(config)},
        "spec": {
            "selector": {ENDPOINT_LABEL: config.name},
            "ports": [{"name": f"expose-{p.port}", "port": p.port, "targetPort": p.port, "protocol": "TCP",
                       **({"appProtocol": "http"} if p.protocol == "http" else {})}
                      for p in config.expose_ports],
        },
    }


def render(config: Config) -> list[dict[str, Any]]:
    """Everything ``serve`` applies for this config (replicas 0: the controller sets them)."""
    docs = [deployment(config, p) for p in pools(config)]
    svc = service(config)
    if svc is not None:
        docs.append(svc)
    return docs
