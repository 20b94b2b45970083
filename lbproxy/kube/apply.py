"""Applying the worker pools: check what must exist, then create or update each pool's Deployment and the Service.

Idempotent across restarts: an unchanged Deployment (same template hash) is not written, so no rollout starts,
and a changed one keeps its current replicas.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence

from ..backends.base import StartFailed
from ..config import Config
from . import manifests
from .client import RETRY_MAX, ApiException, KubeClient, describe_error

log = logging.getLogger("lbproxy.backend.kubernetes")

CONFLICT_RETRIES = 5
FIRST_RETRY = 1.0


async def apply_pools(client: KubeClient, config: Config, pools: Sequence[manifests.Pool],
                      replicas: MutableMapping[str, int]) -> None:
    """Apply every pool's Deployment, recording each pool's current replicas in ``replicas`` as it goes."""
    volume = config.placement.network_volume
    if volume:
        pvc = await client.pvc(volume)
        if pvc is None:
            raise StartFailed(f"placement.network_volume: no PersistentVolumeClaim {volume!r} "
                              f"in namespace {client.namespace}; create it first")
    for pool in pools:
        replicas[pool.name] = await _apply_deployment(client, config, pool)
    svc = manifests.service(config)
    if svc is not None:
        svc["metadata"]["namespace"] = client.namespace
        await client.apply_service(svc)
    log.info("worker pools applied in namespace %s: %s", client.namespace,
             ", ".join(f"{p.name}={replicas[p.name]}" for p in pools))


async def _apply_deployment(client: KubeClient, config: Config, pool: manifests.Pool) -> int:
    """Create or update one pool's Deployment; its replicas (kept as they are)."""
    for _ in range(CONFLICT_RETRIES):
        current = await client.get_deployment(pool.name)
        replicas = int(current["spec"].get("replicas", 0)) if current else 0
        doc = manifests.deployment(config, pool, replicas)
        doc["metadata"]["namespace"] = client.namespace
        if current is None:
            await client.create_deployment(doc)
            return 0
        if current["metadata"].get("annotations", {}).get(manifests.TEMPLATE_HASH) == \
                doc["metadata"]["annotations"][manifests.TEMPLATE_HASH]:
            return replicas  # unchanged: no write, no rollout
        doc["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        try:
            await client.replace_deployment(doc)
            return replicas
        except ApiException as exc:
            if exc.status != 409:  # someone else wrote in between: read again and retry
                raise
    raise StartFailed(f"deployment {pool.name}: kept conflicting with concurrent updates")


async def apply_until_done(apply: Callable[[], Awaitable[None]],
                           sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Retry ``apply`` with back-off until it succeeds (the API was unreachable at start)."""
    delay = FIRST_RETRY
    while True:
        await sleep(delay)
        try:
            await apply()
            return
        except Exception as exc:
            log.warning("applying worker pools failed (%s); retrying in %.0fs", describe_error(exc), delay)
            delay = min(delay * 2, RETRY_MAX)


def explain_refusal(exc: BaseException) -> str:
    """Why ``serve`` cannot start: the API refused what lbproxy applies (the config or the RBAC must change)."""
    if isinstance(exc, StartFailed):
        return str(exc)
    if isinstance(exc, ApiException) and exc.status == 403:
        return f"backend: the Kubernetes API refused lbproxy ({exc.reason}); check the RBAC of its service account"
    return (f"backend: the Kubernetes API refused the worker manifests: {describe_error(exc)} "
            f"{getattr(exc, 'body', '')}")
