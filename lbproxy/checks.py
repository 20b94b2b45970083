"""What `lbproxy check` and `serve` say about a valid config: risks, blocking problems, and notices.

Pure functions of a Config (no I/O): a config can be valid yet risky (warnings), valid yet unservable by its
backend (problems: `serve` refuses to start), or set things that have no effect here (notices). Each line
starts with the key it is about, like the config's own errors.
"""

from __future__ import annotations

import importlib.util

from lbproxy.config import Config
from lbproxy.config_fields import refused_locally
from lbproxy.durations import format_duration
from lbproxy.prices import tariff_for
from lbproxy.queue.locations import store_kind

__all__ = ["backend_problems", "notices", "risk_warnings"]

# Keys the local backend cannot honour, with the reason: metadata on the config model's fields
# (config_fields.kubernetes_only). An error only when the file sets them, so a config written for Kubernetes
# fails loudly instead of running without its placement.
_KUBERNETES_ONLY = refused_locally(Config)


def _headroom(active: int) -> int:
    """workers.max for 20% headroom over `active` (at least one more worker); integer math, any size."""
    return max(active + 1, -(-active * 6 // 5))


def risk_warnings(config: Config) -> list[str]:
    """Valid but risky choices, after the product page's best practices; `check` prints them."""
    warnings: list[str] = []
    workers, timeouts = config.workers, config.timeouts
    if workers.max == 1:
        warnings.append(
            "workers.max: 1 worker is a bottleneck and leaves no room to replace a failing one; set 2 or more"
        )
    elif workers.max == workers.active:
        warnings.append(
            f"workers.max: equals workers.active ({workers.active}), so a load spike has nowhere to go; "
            f"plan for 20% headroom (workers.max: {_headroom(workers.active)})"
        )
    if timeouts.execution is None:
        warnings.append(
            "timeouts.execution: off, so a stuck request holds its worker forever; set a limit (default 600s)"
        )
    if not config.auth.api_keys and not config.listen.is_loopback():
        warnings.append(
            f"auth.api_keys: none, and listen ({config.listen}) is not loopback: anyone who can reach it "
            f"can use the workers; set auth.api_keys or LBPROXY_API_KEYS"
        )
    if not config.admin.is_loopback():
        warnings.append(
            f"admin: {config.admin} is not loopback and /status and /metrics answer without a key; "
            f"bind it to 127.0.0.1 unless a network policy guards it"
        )
    if timeouts.idle < 1:
        warnings.append(
            f"timeouts.idle: {format_duration(timeouts.idle)} stops workers as soon as they are idle, so "
            f"every burst pays a cold start (start/stop churn); match it to the worker's cold start"
        )
    if config.scaling.strategy == "queue_delay" and config.scaling.queue_delay > 10:
        warnings.append(
            f"scaling.queue_delay: {format_duration(config.scaling.queue_delay)} lets requests wait that "
            f"long before a worker is added (slow scale-up); 2s to 4s is typical"
        )
    warnings += _never_scales(config)
    q = config.queue
    if config.type == "queue" and config.backend.type == "kubernetes" and q.delivery == "sdk" \
            and q.worker_listen.is_loopback():
        warnings.append(f"queue.worker_listen: {q.worker_listen} is loopback: worker pods in the cluster cannot "
                        f"reach it (only workers on this host can); listen on 0.0.0.0")
    limit = config.cost.max_per_hour
    floor = _active_rate_per_hour(config)
    if limit is not None and floor > limit:
        warnings.append(
            f"cost.max_per_hour: ${limit:g}/h is below what workers.active ({workers.active}) cost "
            f"(${floor:.2f}/h): scaling is capped before they all run; raise the limit or lower workers.active"
        )
    if timeouts.init < 10:
        warnings.append(
            f"timeouts.init: {format_duration(timeouts.init)} is very short: a worker still loading its "
            f"model is replaced before it is ready; allow its whole cold start (default 7m)"
        )
    return warnings


def _never_scales(config: Config) -> list[str]:
    """Combinations under which the endpoint can never add a worker (or never serve at all)."""
    workers, limits, scaling = config.workers, config.limits, config.scaling
    found: list[str] = []
    if config.type == "queue":
        return found  # jobs wait in the job store, not in limits.max_queue or timeouts.wait
    if limits.max_queue == 0 and workers.active == 0:
        found.append(
            "limits.max_queue: 0 with workers.active: 0 refuses every request (429) while no worker is ready, so "
            "no request ever starts one: the endpoint never serves; allow a queue or keep a worker active"
        )
    elif scaling.strategy == "queue_delay" and workers.concurrency and workers.max > workers.active:
        if limits.max_queue == 0:
            found.append(
                "limits.max_queue: 0 means no request ever waits, so scaling.queue_delay never adds a worker "
                f"beyond workers.active ({workers.active}); allow a queue or use scaling.strategy: request_count"
            )
        elif scaling.queue_delay >= config.timeouts.wait:
            found.append(
                f"scaling.queue_delay: {format_duration(scaling.queue_delay)} is not below timeouts.wait "
                f"({format_duration(config.timeouts.wait)}): requests give up (503) before they have waited "
                f"long enough to add a worker, so the endpoint never scales up; lower it below timeouts.wait"
            )
    return found


def _active_rate_per_hour(config: Config) -> float:
    """Dollars per hour of the workers.active workers at the active price (0 when they have no price)."""
    tariff, default, new = tariff_for(config)
    rate = tariff.rate(new if config.backend.type == "kubernetes" else default)
    return config.workers.active * rate.active * 3600 if rate is not None else 0.0


def backend_problems(config: Config) -> list[str]:
    """Why `serve` must refuse this config with its backend: a setting it cannot honour is an error."""
    problems: list[str] = []
    if config.type == "queue":
        problems += _queue_problems(config)
    if config.backend.type == "local":
        for key, why in _KUBERNETES_ONLY.items():
            if config.set_in_file(key):
                problems.append(f"{key}: {why}; remove it or set backend.type: kubernetes")
        if config.worker.command is None:
            problems.append(
                "worker.command: required with the local backend (the argv that starts one worker)"
            )
    else:
        if config.worker.image is None:
            problems.append(
                "worker.image: required with the kubernetes backend (the container image of one worker)"
            )
        if config.gpu.categories and config.cost.category is not None:
            problems.append("cost.category: kubernetes bills each pod at its pool's GPU category (gpu.categories); "
                            "remove cost.category")
        if importlib.util.find_spec("kubernetes") is None:
            problems.append("backend.type: kubernetes needs the official client: pip install 'lbproxy[kubernetes]'")
    return problems


def _queue_problems(config: Config) -> list[str]:
    """What a queue endpoint needs of its store and, on Kubernetes, of the way worker pods reach it."""
    q = config.queue
    found: list[str] = []
    if store_kind(q.store) == "postgresql" and importlib.util.find_spec("asyncpg") is None:
        found.append("queue.store: a postgresql:// store needs its driver: pip install 'lbproxy[postgres]'")
    if config.backend.type != "kubernetes" or q.delivery != "sdk":
        return found
    if q.worker_url is None:
        found.append("queue.worker_url: required with type: queue on kubernetes: the URL worker pods reach the "
                     "worker API at (e.g. http://NAME-proxy-worker-api:8081; the Helm chart sets it)")
    if q.worker_key_secret is None:
        found.append("queue.worker_key_secret: required with type: queue on kubernetes: the Secret holding the "
                     "workers' key (key worker-key; the Helm chart creates it)")
    if q.worker_listen.port == 0:
        found.append(f"queue.worker_listen: {q.worker_listen} picks a port at random, which queue.worker_url cannot "
                     "name; listen on a fixed port on all interfaces (e.g. 0.0.0.0:8081)")
    return found


def notices(config: Config) -> list[str]:
    """Settings the file sets that are accepted but have no effect here; `check` prints them as notes."""
    found: list[str] = []
    if config.backend.type == "local" and config.set_in_file("flashboot"):
        found.append("flashboot: has no effect with the local backend (each worker is a fresh local process)")
    if config.type == "load_balancer":
        for key in ("timeouts.ttl", "queue", "worker.job_path"):
            if config.set_in_file(key):
                found.append(f"{key}: only applies to queue endpoints; no effect with type: load_balancer")
    else:
        found.extend(_queue_notices(config))
    strategy = config.scaling.strategy
    if strategy == "request_count" and config.set_in_file("scaling.queue_delay"):
        found.append("scaling.queue_delay: no effect with scaling.strategy: request_count")
    if strategy == "queue_delay" and config.workers.concurrency and config.set_in_file("scaling.requests_per_worker"):
        found.append("scaling.requests_per_worker: only used by scaling.strategy: request_count (or "
                     "workers.concurrency: 0)")
    if not config.auth.api_keys and config.set_in_file("auth.forward_authorization"):
        found.append(
            "auth.forward_authorization: no effect without api keys "
            "(the Authorization header then always reaches the worker)"
        )
    return found


def _queue_notices(config: Config) -> list[str]:
    """Settings of the request path that a queue endpoint replaces with its own."""
    found = [
        f"{key}: no effect with type: queue ({instead})"
        for key, instead in (
            ("limits.max_body_size", "queue.max_run_body and queue.max_runsync_body limit submissions"),
            ("limits.max_queue", "jobs wait in the job store, bounded by their TTL"),
            ("auth.forward_authorization", "workers never see the client's request"),
        )
        if config.set_in_file(key)
    ]
    sdk = config.queue.delivery == "sdk"
    if config.set_in_file("timeouts.wait"):
        found.append("timeouts.wait: no effect with type: queue (a job waits for a worker in the store, until "
                     "timeouts.ttl)")
    for key, why in (("worker.health_path", "an SDK worker is ready at its first contact with the worker API"),
                     ("worker.job_path", "SDK workers pull their jobs")):
        if sdk and config.set_in_file(key):
            found.append(f"{key}: no effect with queue.delivery: sdk ({why})")
    for key in ("queue.worker_listen", "queue.ping_interval", "queue.take_hold", "queue.stop_grace"):
        if not sdk and config.set_in_file(key):
            found.append(f"{key}: no effect with queue.delivery: http (lbproxy pushes jobs to workers; the "
                         "worker API is for SDK workers)")
    return found
