"""The pod watch: the endpoint's worker pods as lbproxy knows them, turned into worker events.

It lists the pods, then watches from the list's resourceVersion; resumes when the server ends a watch, lists
again on 410 Gone and after any failure (which also catches deletions missed meanwhile), and backs off while
the API is down. The proxy keeps routing to the workers it knows meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..backends.base import WorkerAddress, WorkerEvents
from . import manifests
from .client import RETRY_MAX, ApiException, KubeClient, describe_error

log = logging.getLogger("lbproxy.backend.kubernetes")

FIRST_RETRY = 0.5


@dataclass(eq=False, slots=True)
class Pod:
    """One worker pod, as the last event about it said."""

    name: str
    pool: str  # its lbproxy.io/pool label
    ip: str = ""
    node: str = ""
    phase: str = "Pending"
    terminating: bool = False
    draining: bool = False
    unschedulable_since: float | None = None
    started_at: float | None = None  # status.startTime (unix time): its GPU is billed from then


class PodWatch:
    """Keeps ``pods`` current and tells ``events`` about arrivals, addresses, drains and exits."""

    def __init__(
        self,
        client: KubeClient,
        selector: str,
        events: WorkerEvents,
        pools: Sequence[manifests.Pool],
        ports: tuple[int, int],
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_running: Callable[[str], None] = lambda node: None,
    ) -> None:
        self.client = client
        self.selector = selector
        self.events = events
        self._by_label = {p.label: p for p in pools}
        self._unknown_rank = len(pools)  # a pod of a pool no longer configured: scale-down takes it first
        self._port, self._health_port = ports
        self.clock = clock
        self.sleep = sleep
        self.on_running = on_running  # called with the node of a pod that just got its IP
        self.pods: dict[str, Pod] = {}
        self._gone: set[str] = set()  # finished pods: never routed to again, whatever later events say
        self.api_ok = False  # the API answered last time (the watch's, or a successful apply)
        self.known = asyncio.Event()  # set by the first pod list: which nodes run a worker is known

    async def run(self) -> None:
        version: str | None = None
        delay = FIRST_RETRY
        while True:
            try:
                if version is None:
                    items, version = await self.client.list_pods(self.selector)
                    self._reconcile(items)
                    self.known.set()
                    if not self.api_ok:
                        log.info("Kubernetes API reachable: %d worker pod(s)", len(self.pods))
                    self.api_ok = True
                    delay = FIRST_RETRY
                async for kind, obj in self.client.watch_pods(self.selector, version):
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if kind != "BOOKMARK":
                        self.on_pod(kind, obj)
                continue  # the server closed the watch after its timeout: resume from the last version
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status == 410:
                    log.info("pod watch expired (410 Gone): listing pods again")
                    version = None
                    continue
                self._api_trouble(exc, delay)
            except Exception as exc:
                self._api_trouble(exc, delay)
            # List again after any failure: it catches what changed while the API was away (deletions too).
            version = None
            await self.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    def _api_trouble(self, exc: BaseException, delay: float) -> None:
        if self.api_ok:
            log.error("Kubernetes API unreachable (%s): routing to the %d known worker(s); retrying",
                      describe_error(exc), len(self.pods))
        else:
            log.debug("pod watch failed (%s); retrying in %.1fs", describe_error(exc), delay)
        self.api_ok = False

    def _reconcile(self, items: list[dict[str, Any]]) -> None:
        seen = {item["metadata"]["name"] for item in items}
        for name in list(self.pods):
            if name not in seen:
                self.on_pod("DELETED", {"metadata": {"name": name}})
        for item in items:
            self.on_pod("MODIFIED", item)

    def on_pod(self, kind: str, obj: dict[str, Any]) -> None:
        """Apply one watch event (ADDED, MODIFIED, DELETED) for the pod ``obj``."""
        meta = obj.get("metadata", {})
        name = meta["name"]
        if kind == "DELETED":
            if self.pods.pop(name, None) is not None:
                self.events.worker_exited(name, "pod deleted")
            self._gone.discard(name)
            return
        if name in self._gone:
            return
        status = obj.get("status", {})
        spec = obj.get("spec", {})
        pool_label = meta.get("labels", {}).get(manifests.POOL_LABEL, manifests.DEFAULT_POOL)
        phase = status.get("phase", "Pending")
        if phase in ("Failed", "Succeeded"):
            if self.pods.pop(name, None) is not None:
                self.events.worker_exited(name, f"pod {phase.lower()}: {status.get('reason', '')}".rstrip(": "))
            self._gone.add(name)
            return
        pod = self.pods.get(name)
        terminating = meta.get("deletionTimestamp") is not None
        if pod is None:
            if terminating:
                return  # never ours to route to
            pool = self._by_label.get(pool_label)
            pod = self.pods[name] = Pod(name, pool_label)
            self.events.worker_added(WorkerAddress(name, "", self._port, self._health_port,
                                                   pool.rank if pool else self._unknown_rank))
        pod.phase = phase
        pod.node = spec.get("nodeName", "") or ""
        if pod.started_at is None and status.get("startTime"):
            with contextlib.suppress(ValueError, TypeError):
                pod.started_at = datetime.fromisoformat(status["startTime"]).timestamp()
        unschedulable = any(c.get("type") == "PodScheduled" and c.get("status") == "False"
                            and c.get("reason") == "Unschedulable" for c in status.get("conditions") or ())
        if unschedulable and pod.unschedulable_since is None:
            pod.unschedulable_since = self.clock()
        elif not unschedulable:
            pod.unschedulable_since = None
        ip = status.get("podIP") or ""
        if ip and not pod.ip and phase == "Running":
            pod.ip = ip
            self.events.worker_address(name, ip)
            if pod.node:
                self.on_running(pod.node)
        draining = manifests.DRAINING_ANNOTATION in (meta.get("annotations") or {})
        if draining != pod.draining:
            pod.draining = draining
            self.events.worker_draining(name, draining)
        if terminating and not pod.terminating:
            pod.terminating = True
            self.events.worker_terminating(name, "pod is terminating")
