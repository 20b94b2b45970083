"""The kubernetes backend: workers are pods of one Deployment per GPU category, scaled drain-safe.

- Start: raise the chosen pool's replicas (scale subresource). The pod appears through the watch, starts
  as a worker without an address, gets one with its pod IP; lbproxy probes ``/ping`` itself.
- Stop (after the drain): mark the victim with the lowest ``pod-deletion-cost``, lower replicas by one, and
  check that the ReplicaSet took that pod (it ranks unscheduled and not-ready pods first).
- The pod watch resumes from its resourceVersion, re-lists on 410 Gone and backs off while the API is down;
  the proxy keeps routing to the workers it knows meanwhile.
- flashboot: a node gets the label ``<flashboot_prefix><endpoint>=<unix time>`` when a worker runs there; at start
  and then hourly, labels older than ``FLASHBOOT_RETENTION`` go from nodes that run no worker now.
- Workers outlive the proxy: ``close()`` leaves the Deployments as they are (another replica, or the next
  start of lbproxy, takes over the same pods).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..config import Config
from ..kube import manifests
from ..kube.client import ApiException, KubeClient, is_unreachable
from ..kube.fallback import PoolState, choose_pool, moves
from ..kube.placement import expired_flashboot_nodes, flashboot_label
from .base import StartFailed, WorkerAddress, WorkerEvents

log = logging.getLogger("lbproxy.backend.kubernetes")

VICTIM_COST = "-1000"
STOP_VERIFY_SECONDS = 30.0
BACKOFF_MAX = 30.0
FALLBACK_CHECK = 1.0
FLASHBOOT_RELABEL = 3600.0  # also the period of the flashboot label expiry
# How long a node's flashboot label means "ran this endpoint recently". A day spans the daily cycle flashboot is
# for (scaled down overnight, back up in the morning); after it, a busy GPU node has likely lost the image to
# the kubelet's image garbage collection (on disk pressure, or imageMaximumGCAge), and preferring it would only
# pull workers towards a node that pulls the image again anyway.
FLASHBOOT_RETENTION = 24 * 3600.0


@dataclass(eq=False, slots=True)
class _Pod:
    name: str
    pool: str
    ip: str = ""
    node: str = ""
    phase: str = "Pending"
    terminating: bool = False
    draining: bool = False
    unschedulable_since: float | None = None
    reason: str = ""
    started_at: float | None = None  # status.startTime (unix time): its GPU is billed from then


class KubernetesBackend:
    def __init__(self, config: Config, events: WorkerEvents, clock: Any = time.monotonic) -> None:
        self.config = config
        self.events = events
        self.clock = clock
        self.client = KubeClient()
        self.pools = manifests.pools(config)
        self._by_label = {p.label: p for p in self.pools}
        self.replicas: dict[str, int] = {p.name: 0 for p in self.pools}
        self.blocked_until: dict[str, float] = {}
        self.pods: dict[str, _Pod] = {}
        self._gone: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._labelled_nodes: dict[str, float] = {}
        self._flashboot = config.flashboot
        self._expiring = config.flashboot  # off when nodes cannot be listed
        self._pods_known = asyncio.Event()  # set by the first pod list: which nodes run a worker is known
        self._port = config.worker.port
        self._health_port = config.worker.health_port or config.worker.port
        self.selector = manifests.endpoint_selector(config)
        self.api_ok = False
        self.notices: list[str] = []

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
                raise StartFailed(_explain(exc)) from exc
            log.error("Kubernetes API unreachable at start (%s); serving and retrying", _short(exc))
            self._tasks.append(asyncio.create_task(self._apply_until_done(), name="kube apply"))
        self._tasks.append(asyncio.create_task(self._watch_pods(), name="kube pod watch"))
        self._tasks.append(asyncio.create_task(self._fallback_loop(), name="kube gpu fallback"))
        if self._flashboot:
            self._tasks.append(asyncio.create_task(self._flashboot_loop(), name="kube flashboot expiry"))

    async def _apply(self) -> None:
        cfg = self.config
        if cfg.placement.network_volume:
            pvc = await self.client.pvc(cfg.placement.network_volume)
            if pvc is None:
                raise StartFailed(
                    f"placement.network_volume: no PersistentVolumeClaim {cfg.placement.network_volume!r} "
                    f"in namespace {self.client.namespace}; create it first")
        for pool in self.pools:
            self.replicas[pool.name] = await self._apply_deployment(pool)
        svc = manifests.service(cfg)
        if svc is not None:
            svc["metadata"]["namespace"] = self.client.namespace
            await self.client.apply_service(svc)
        self.api_ok = True
        log.info("worker pools applied in namespace %s: %s", self.client.namespace,
                 ", ".join(f"{p.name}={self.replicas[p.name]}" for p in self.pools))

    async def _apply_deployment(self, pool: manifests.Pool) -> int:
        """Create or update one pool's Deployment, keeping its current replicas. Idempotent across restarts."""
        for _ in range(5):
            current = await self.client.get_deployment(pool.name)
            replicas = int(current["spec"].get("replicas", 0)) if current else 0
            doc = manifests.deployment(self.config, pool, replicas)
            doc["metadata"]["namespace"] = self.client.namespace
            if current is None:
                await self.client.create_deployment(doc)
                return 0
            if current["metadata"].get("annotations", {}).get(manifests.TEMPLATE_HASH) == \
                    doc["metadata"]["annotations"][manifests.TEMPLATE_HASH]:
                return replicas  # unchanged: no write, no rollout
            doc["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            try:
                await self.client.replace_deployment(doc)
                return replicas
            except ApiException as exc:
                if exc.status != 409:  # someone else wrote in between: read again and retry
                    raise
        raise StartFailed(f"deployment {pool.name}: kept conflicting with concurrent updates")

    async def _apply_until_done(self) -> None:
        delay = 1.0
        while True:
            await asyncio.sleep(delay)
            try:
                await self._apply()
                return
            except Exception as exc:
                log.warning("applying worker pools failed (%s); retrying in %.0fs", _short(exc), delay)
                delay = min(delay * 2, BACKOFF_MAX)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.close()

    # -- scaling ---------------------------------------------------------------------------------

    @property
    def pending_starts(self) -> int:
        """Replicas asked for whose pods the watch has not shown yet."""
        live: dict[str, int] = {}
        for pod in self.pods.values():
            if not pod.terminating:
                live[pod.pool] = live.get(pod.pool, 0) + 1
        return sum(max(0, self.replicas[p.name] - live.get(p.label, 0)) for p in self.pools)

    def _pool_states(self) -> list[PoolState]:
        stuck: dict[str, list[float]] = {}
        for pod in self.pods.values():
            if pod.unschedulable_since is not None and not pod.terminating:
                stuck.setdefault(pod.pool, []).append(pod.unschedulable_since)
        return [PoolState(p.name, p.rank, tuple(stuck.get(p.label, ()))) for p in self.pools]

    async def start_worker(self) -> None:
        name = choose_pool(self._pool_states(), self.blocked_until, self.clock())
        await self._scale(name, self.replicas[name] + 1)

    async def _scale(self, name: str, replicas: int) -> None:
        before = self.replicas[name]
        self.replicas[name] = replicas  # counted at once: the next decision must see this start
        try:
            await self.client.scale(name, replicas)
        except Exception as exc:
            self.replicas[name] = before
            raise StartFailed(f"scaling {name} to {replicas}: {_short(exc)}") from exc

    async def stop_worker(self, worker_id: str) -> bool:
        pod = self.pods.get(worker_id)
        if pod is None or pod.terminating:
            return True
        pool = next(p for p in self.pools if p.label == pod.pool)
        try:
            await self.client.annotate_pod(worker_id, {manifests.DELETION_COST: VICTIM_COST})
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise StartFailed(f"marking pod {worker_id} for deletion: {_short(exc)}") from exc
        except Exception as exc:
            raise StartFailed(f"marking pod {worker_id} for deletion: {_short(exc)}") from exc
        await self._scale(pool.name, max(0, self.replicas[pool.name] - 1))
        # The ReplicaSet ranks unscheduled and not-ready pods before a low deletion cost: verify its choice.
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
            await asyncio.sleep(0.05)
        log.warning("pod %s was not stopped within %.0fs of scaling %s down", worker_id, STOP_VERIFY_SECONDS,
                    pool.name)
        return False

    async def mark_draining(self, worker_id: str, draining: bool) -> None:
        try:
            await self.client.annotate_pod(
                worker_id, {manifests.DRAINING_ANNOTATION: str(int(time.time())) if draining else None})
        except ApiException as exc:
            if exc.status == 404:
                return
            raise StartFailed(f"annotating pod {worker_id}: {_short(exc)}") from exc
        except Exception as exc:
            raise StartFailed(f"annotating pod {worker_id}: {_short(exc)}") from exc

    # -- GPU category fallback -------------------------------------------------------------------

    async def _fallback_loop(self) -> None:
        retry = self.config.backend.fallback_retry
        after = self.config.backend.fallback_after
        warned: set[str] = set()
        while True:
            await asyncio.sleep(FALLBACK_CHECK)
            now = self.clock()
            for move in moves(self._pool_states(), self.blocked_until, now, after):
                if move.target is None:
                    if move.source not in warned:
                        warned.add(move.source)
                        log.warning("%d worker(s) of %s unschedulable for %gs and no later gpu.categories "
                                    "entry to fall back to", move.count, move.source, after)
                    continue
                warned.discard(move.source)
                self.blocked_until[move.source] = now + retry
                log.warning("GPU fallback: %d worker(s) of %s unschedulable for %gs; starting them in %s "
                            "(%s is tried again in %gs)", move.count, move.source, after, move.target,
                            move.source, retry)
                try:
                    # The ReplicaSet removes unscheduled pods first, so the stuck ones are the ones that go.
                    await self._scale(move.source, max(0, self.replicas[move.source] - move.count))
                    await self._scale(move.target, self.replicas[move.target] + move.count)
                except StartFailed as exc:
                    log.error("GPU fallback failed: %s", exc)

    # -- pod watch -------------------------------------------------------------------------------

    async def _watch_pods(self) -> None:
        version: str | None = None
        delay = 0.5
        while True:
            try:
                if version is None:
                    items, version = await self.client.list_pods(self.selector)
                    self._reconcile(items)
                    self._pods_known.set()
                    if not self.api_ok:
                        log.info("Kubernetes API reachable: %d worker pod(s)", len(self.pods))
                    self.api_ok = True
                    delay = 0.5
                async for kind, obj in self.client.watch_pods(self.selector, version):
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    if kind != "BOOKMARK":
                        self._on_pod(kind, obj)
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
            # Re-list after any failure: it catches what changed while the API was away (deletions too).
            version = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _api_trouble(self, exc: BaseException, delay: float) -> None:
        if self.api_ok:
            log.error("Kubernetes API unreachable (%s): routing to the %d known worker(s); retrying",
                      _short(exc), len(self.pods))
        else:
            log.debug("pod watch failed (%s); retrying in %.1fs", _short(exc), delay)
        self.api_ok = False

    def _reconcile(self, items: list[dict[str, Any]]) -> None:
        seen = {item["metadata"]["name"] for item in items}
        for name in list(self.pods):
            if name not in seen:
                self._on_pod("DELETED", {"metadata": {"name": name}})
        for item in items:
            self._on_pod("MODIFIED", item)

    def _on_pod(self, kind: str, obj: dict[str, Any]) -> None:
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
            pod = self.pods[name] = _Pod(name, pool_label)
            self.events.worker_added(WorkerAddress(name, "", self._port, self._health_port,
                                                   pool.rank if pool else len(self.pools)))
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
            if self._flashboot and pod.node:
                self._spawn_label(pod.node)
        draining = manifests.DRAINING_ANNOTATION in (meta.get("annotations") or {})
        if draining != pod.draining:
            pod.draining = draining
            self.events.worker_draining(name, draining)
        if terminating and not pod.terminating:
            pod.terminating = True
            self.events.worker_terminating(name, "pod is terminating")

    # -- flashboot ---------------------------------------------------------------------------------

    def _label_due(self, node: str) -> bool:
        """True (and counted as labelled now) when this replica has not labelled ``node`` within the interval."""
        now = self.clock()
        if now - self._labelled_nodes.get(node, -FLASHBOOT_RELABEL) < FLASHBOOT_RELABEL:
            return False
        self._labelled_nodes[node] = now
        return True

    def _spawn_label(self, node: str) -> None:
        if self._label_due(node):
            self._tasks.append(asyncio.create_task(self._label(node)))

    def _cannot_patch_nodes(self) -> None:
        if self._flashboot:
            self._flashboot = False
            self.notices.append("flashboot: cannot label nodes (RBAC: patch nodes); recent-node "
                                "preference is off")
            log.warning("flashboot: no permission to label nodes; recent-node preference is off")

    async def _label(self, node: str) -> None:
        """Mark the node as having run this endpoint (image cached): flashboot prefers it on restarts."""
        try:
            await self.client.label_node(node, {flashboot_label(self.config): str(int(time.time()))})
        except ApiException as exc:
            if exc.status == 403:
                self._cannot_patch_nodes()
            else:
                log.warning("flashboot: labelling node %s failed: %s", node, _short(exc))
        except Exception as exc:
            log.warning("flashboot: labelling node %s failed: %s", node, _short(exc))

    async def _flashboot_loop(self) -> None:
        """Once the pods are known (at start), then every FLASHBOOT_RELABEL: see ``_expire_labels``."""
        await self._pods_known.wait()
        while self._flashboot and self._expiring:
            await self._expire_labels()
            await asyncio.sleep(FLASHBOOT_RELABEL)

    async def _expire_labels(self) -> None:
        """Keep "recently" true: refresh the label of nodes running a worker (one that runs for days must not
        look stale the moment it stops), and remove this endpoint's label from the other nodes once it is older
        than FLASHBOOT_RETENTION. The Deployment's affinity cannot compare ages; changing it would roll every pod.

        Each removal is conditional on the node's resourceVersion from the list: a node labelled again since
        (by this replica or another one) answers 409 and keeps its label.
        """
        for node in sorted({p.node for p in self.pods.values() if p.node and p.ip}):
            if self._label_due(node):
                await self._label(node)
        key = flashboot_label(self.config)
        try:
            nodes = await self.client.list_nodes(key)
        except ApiException as exc:
            if exc.status == 403:
                self._expiring = False
                self.notices.append(f"flashboot: cannot list nodes (RBAC: list nodes); node labels older than "
                                    f"{FLASHBOOT_RETENTION / 3600:g}h are not removed")
                log.warning("flashboot: no permission to list nodes; old flashboot labels are not removed")
            else:
                log.warning("flashboot: listing labelled nodes failed: %s", _short(exc))
            return
        except Exception as exc:
            log.warning("flashboot: listing labelled nodes failed: %s", _short(exc))
            return
        values = {n["metadata"]["name"]: (n["metadata"].get("labels") or {}).get(key, "") for n in nodes}
        versions = {n["metadata"]["name"]: n["metadata"].get("resourceVersion") for n in nodes}
        busy = {p.node for p in self.pods.values() if p.node}
        for node in expired_flashboot_nodes(values, time.time(), busy, FLASHBOOT_RETENTION):
            try:
                await self.client.label_node(node, {key: None}, versions[node])
            except ApiException as exc:
                if exc.status == 403:
                    self._cannot_patch_nodes()
                    return
                if exc.status in (404, 409):  # gone, or changed since the list: the next pass looks again
                    log.debug("flashboot: node %s changed before its label was removed (%s)", node, exc.status)
                else:
                    log.warning("flashboot: removing the label of node %s failed: %s", node, _short(exc))
            except Exception as exc:
                log.warning("flashboot: removing the label of node %s failed: %s", node, _short(exc))
            else:
                log.info("flashboot: removed the stale label %s=%s from node %s (retention %gh)", key,
                         values[node], node, FLASHBOOT_RETENTION / 3600)

    def status(self) -> dict[str, object]:
        """Pools, replicas and fallback blocks for /status."""
        now = self.clock()
        return {
            "namespace": self.client.namespace,
            "api_reachable": self.api_ok,
            "pools": [{"deployment": p.name, "gpu_category": p.label, "rank": p.rank,
                       "replicas": self.replicas[p.name],
                       # rounded up: 0 must mean the block is over, not "less than 50 ms left"
                       "blocked_for_seconds": math.ceil(max(0.0, self.blocked_until.get(p.name, 0.0) - now) * 10)
                       / 10}
                      for p in self.pools],
        }

    def describe(self, worker_id: str) -> dict[str, object]:
        pod = self.pods.get(worker_id)
        if pod is None:
            return {}
        out: dict[str, object] = {"pod": pod.name, "pool": pod.pool, "phase": pod.phase, "node": pod.node}
        if pod.started_at is not None:
            out["started_at"] = pod.started_at
        if pod.unschedulable_since is not None:
            out["unschedulable_seconds"] = round(self.clock() - pod.unschedulable_since, 1)
        return out


def _short(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _explain(exc: BaseException) -> str:
    if isinstance(exc, StartFailed):
        return str(exc)
    if isinstance(exc, ApiException) and exc.status == 403:
        return f"backend: the Kubernetes API refused lbproxy ({exc.reason}); check the RBAC of its service account"
    return f"backend: the Kubernetes API refused the worker manifests: {_short(exc)} {getattr(exc, 'body', '')}"
