"""The kubernetes backend: workers are pods of one Deployment per GPU category, scaled drain-safe.

This module wires the parts, each in ``lbproxy/kube/``:

- ``apply.py``: create or update the pools' Deployments (and the Service) at start; keep trying in the
  background while the API is unreachable.
- ``scaling.py``: start = one more replica; stop = the chosen pod marked with the lowest deletion cost, one
  replica less, and a check that the ReplicaSet took that pod; the drain announcement on the pod.
- ``pod_watch.py``: the pods, and the worker events they mean (a pod starts as a worker without an address and
  gets one with its pod IP; lbproxy probes ``/ping`` itself).
- ``fallback_loop.py``: which GPU category takes a new worker, and moving unschedulable ones on.
- ``flashboot.py``: node labels for nodes that ran the endpoint recently.

Workers outlive the proxy: ``close()`` leaves the Deployments as they are (another replica, or the next start of
lbproxy, takes over the same pods).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ..config import Config
from ..kube import manifests
from ..kube.apply import apply_pools, apply_until_done, explain_refusal
from ..kube.client import KubeClient, describe_error, is_unreachable
from ..kube.fallback_loop import FallbackLoop
from ..kube.flashboot import FLASHBOOT_RETENTION, Flashboot
from ..kube.pod_watch import PodWatch
from ..kube.scaling import PoolScaler
from .base import StartFailed, WorkerEvents

__all__ = ["FLASHBOOT_RETENTION", "KubernetesBackend"]

log = logging.getLogger("lbproxy.backend.kubernetes")


class KubernetesBackend:
    def __init__(
        self,
        config: Config,
        events: WorkerEvents,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.clock = clock
        self.sleep = sleep
        self.client = KubeClient()
        self.pools = manifests.pools(config)
        self.notices: list[str] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.flashboot: Flashboot | None = None
        self.watch = PodWatch(self.client, manifests.endpoint_selector(config), events, self.pools,
                              (config.worker.port, config.worker.health_port or config.worker.port), clock, sleep,
                              on_running=self._worker_running)
        self.scaler = PoolScaler(self.client, self.pools, self.watch.pods, clock, sleep)
        self.fallback = FallbackLoop(config, self.pools, self.watch.pods, self.scaler, clock, sleep)
        if config.flashboot:
            self.flashboot = Flashboot(self.client, config, self.watch.pods, self.watch.known, self.notices, clock,
                                       sleep)

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, check what must exist, and create or update the worker Deployments.

        A refusal the config must fix (403, 422, a missing PVC) raises StartFailed; an unreachable API does
        not: lbproxy serves and keeps trying in the background.
        """
        cfg = self.config
        try:
            await self.client.open(cfg.backend.kubeconfig, cfg.backend.namespace)
        except Exception as exc:
            raise StartFailed(f"backend.kubeconfig: cannot load Kubernetes credentials: {exc}") from exc
        try:
            await self._apply()
        except Exception as exc:
            if not is_unreachable(exc):
                raise StartFailed(explain_refusal(exc)) from exc
            log.error("Kubernetes API unreachable at start (%s); serving and retrying", describe_error(exc))
            self._spawn(apply_until_done(self._apply, self.sleep), "kube apply")
        self._spawn(self.watch.run(), "kube pod watch")
        self._spawn(self.fallback.run(), "kube gpu fallback")
        if self.flashboot is not None:
            self._spawn(self.flashboot.run(), "kube flashboot expiry")

    async def _apply(self) -> None:
        await apply_pools(self.client, self.config, self.pools, self.scaler.replicas)
        self.watch.api_ok = True

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=name))

    def _worker_running(self, node: str) -> None:
        if self.flashboot is not None:
            self.flashboot.worker_running(node)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.flashboot is not None:
            await self.flashboot.close()
        await self.client.close()

    # -- the Backend interface -------------------------------------------------------------------

    @property
    def pending_starts(self) -> int:
        return self.scaler.pending_starts

    async def start_worker(self) -> None:
        name = self.fallback.pool_for_new_worker()
        await self.scaler.scale(name, self.scaler.replicas[name] + 1)

    async def stop_worker(self, worker_id: str) -> bool:
        return await self.scaler.stop(worker_id)

    async def mark_draining(self, worker_id: str, draining: bool) -> None:
        await self.scaler.mark_draining(worker_id, draining)

    def status(self) -> dict[str, object]:
        """Pools, replicas and fallback blocks for /status."""
        now = self.clock()
        blocked = self.fallback.blocked_until
        return {
            "namespace": self.client.namespace,
            "api_reachable": self.watch.api_ok,
            "pools": [{"deployment": p.name, "gpu_category": p.label, "rank": p.rank,
                       "replicas": self.scaler.replicas[p.name],
                       # rounded up: 0 must mean the block is over, not "less than 50 ms left"
                       "blocked_for_seconds": math.ceil(max(0.0, blocked.get(p.name, 0.0) - now) * 10) / 10}
                      for p in self.pools],
        }

    def describe(self, worker_id: str) -> dict[str, object]:
        pod = self.watch.pods.get(worker_id)
        if pod is None:
            return {}
        out: dict[str, object] = {"pod": pod.name, "pool": pod.pool, "phase": pod.phase, "node": pod.node}
        if pod.started_at is not None:
            out["started_at"] = pod.started_at
        if pod.unschedulable_since is not None:
            out["unschedulable_seconds"] = round(self.clock() - pod.unschedulable_since, 1)
        return out
