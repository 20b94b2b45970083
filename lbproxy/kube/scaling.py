"""Scaling the worker pools: replicas through the scale subresource, and stopping the one pod lbproxy chose.

- Up: raise the pool's replicas. The new pod appears through the pod watch.
- Down (after the drain): mark the victim with the lowest ``pod-deletion-cost``, lower replicas by one, and
  check that the ReplicaSet took that pod: it ranks unscheduled and not-ready pods before any deletion cost.
- The drain itself is announced on the pod (``lbproxy.io/draining``), so that every proxy replica stops
  routing to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

from ..backends.base import StartFailed
from . import manifests
from .client import ApiException, KubeClient, describe_error
from .pod_watch import Pod

log = logging.getLogger("lbproxy.backend.kubernetes")

VICTIM_COST = "-1000"
STOP_VERIFY_SECONDS = 30.0
STOP_VERIFY_POLL = 0.05


class PoolScaler:
    """Holds the replicas lbproxy asked of each pool; scales them and verifies which pod a scale-down took."""

    def __init__(
        self,
        client: KubeClient,
        pools: Sequence[manifests.Pool],
        pods: Mapping[str, Pod],
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.pools = pools
        self.pods = pods  # the pod watch's, read only
        self.clock = clock
        self.sleep = sleep
        self.replicas: dict[str, int] = {p.name: 0 for p in pools}

    @property
    def pending_starts(self) -> int:
        """Replicas asked for whose pods the watch has not shown yet."""
        live: dict[str, int] = {}
        for pod in self.pods.values():
            if not pod.terminating:
                live[pod.pool] = live.get(pod.pool, 0) + 1
        return sum(max(0, self.replicas[p.name] - live.get(p.label, 0)) for p in self.pools)

    async def scale(self, name: str, replicas: int) -> None:
        before = self.replicas[name]
        self.replicas[name] = replicas  # counted at once: the next decision must see this start
        try:
            await self.client.scale(name, replicas)
        except Exception as exc:
            self.replicas[name] = before
            raise StartFailed(f"scaling {name} to {replicas}: {describe_error(exc)}") from exc

    async def stop(self, worker_id: str) -> bool:
        """Remove this pod by scaling its pool down; False when the ReplicaSet removed another one instead."""
        pod = self.pods.get(worker_id)
        if pod is None or pod.terminating:
            return True
        pool = next(p for p in self.pools if p.label == pod.pool)
        if not await self._annotate(worker_id, {manifests.DELETION_COST: VICTIM_COST}, "marking pod {} for deletion"):
            return True  # already gone
        await self.scale(pool.name, max(0, self.replicas[pool.name] - 1))
        deadline = self.clock() + STOP_VERIFY_SECONDS
        # Pods that could go instead; an unscheduled one is deleted outright, a running one terminates first.
        others = {n for n, p in self.pods.items() if p.pool == pod.pool and not p.terminating and n != worker_id}
        while self.clock() < deadline:
            if worker_id not in self.pods or self.pods[worker_id].terminating:
                return True
            went = {n for n in others if n not in self.pods or self.pods[n].terminating}
            if went:
                log.warning("ReplicaSet stopped pod %s instead of %s; keeping %s", ", ".join(sorted(went)),
                            worker_id, worker_id)
                with contextlib.suppress(Exception):
                    await self.client.annotate_pod(worker_id, {manifests.DELETION_COST: None})
                return False
            await self.sleep(STOP_VERIFY_POLL)
        log.warning("pod %s was not stopped within %.0fs of scaling %s down", worker_id, STOP_VERIFY_SECONDS,
                    pool.name)
        return False

    async def mark_draining(self, worker_id: str, draining: bool) -> None:
        value = str(int(time.time())) if draining else None  # when: for people reading the pod
        await self._annotate(worker_id, {manifests.DRAINING_ANNOTATION: value}, "annotating pod {}")

    async def _annotate(self, worker_id: str, annotations: dict[str, str | None], doing: str) -> bool:
        """Annotate the pod; False when it is gone. Any other failure raises StartFailed, saying what failed."""
        try:
            await self.client.annotate_pod(worker_id, annotations)
        except Exception as exc:
            if isinstance(exc, ApiException) and exc.status == 404:
                return False
            raise StartFailed(f"{doing.format(worker_id)}: {describe_error(exc)}") from exc
        return True
