"""``KubeEmulator``: a stateful Kubernetes API server on loopback for tests, plus the kubelet and scheduler.

Real ``kubernetes.aio`` clients talk to it over HTTP; tests play kubelet and scheduler through the Python helpers
here, which write the same objects, bump the same resourceVersion and feed the same watches. State survives
``stop()``: ``start(self.port)`` afterwards is an API server coming back from an outage (while stopped,
connections are refused, open watches have been reset and the controllers do not run).

Modelled, each as the real API server documents it:
- core/v1 pods, services, configmaps, secrets, persistentvolumeclaims, events, namespaces, nodes, persistentvolumes;
  apps/v1 deployments (+ ``/scale``) and replicasets (read-only); coordination.k8s.io/v1 leases. Discovery
  (``/api``, ``/apis``, ``/version``) for clients that ask; the typed ``kubernetes.aio`` client never does.
- create (uid, creationTimestamp, generation, generateName, 409 AlreadyExists, 404 for a missing namespace),
  get, list (label selectors of every form, field selectors per kind), PUT with optimistic concurrency
  (409 Conflict; leases refuse an update without resourceVersion, 422, and may be created by PUT), PATCH
  (merge, JSON, strategic merge as apimachinery does it; apply-patch answers 415), DELETE and deletecollection.
- one global resourceVersion; a write that changes nothing stores nothing and emits no event.
- status subresources: writes to the main resource keep the status, ``/status`` writes change only the status;
  the pod spec is immutable but for images and the few fields the real validation allows.
- graceful pod deletion: deletionTimestamp = now + grace, the pod stays until ``finish_deletion`` (the kubelet's
  delete with grace 0: MODIFIED then DELETED); unscheduled or finished pods and ``gracePeriodSeconds=0`` go at
  once; a shorter grace period may be given later; finalizers hold any object.
- watches: from a resourceVersion (replay from history), or from now with synthetic ADDED; selector transitions
  (an object leaving the selector is DELETED for the watch); timeoutSeconds; BOOKMARK events
  (``bookmark_interval``, ``send_bookmarks()``); 410 Expired as one ERROR event after ``compact()``.
- a deployment controller and garbage collector: see ``controller.py``.
- a few defaults (replicas 1, terminationGracePeriodSeconds 30, ports TCP...) and validations (names, labels,
  containers, selector matches template, selector immutable).

Not modelled: authentication and RBAC (any bearer token is everyone; ``forbid()`` refuses chosen verbs on chosen
resources to everyone), admission, server-side apply and managed fields, list pagination (``limit`` is accepted
and the whole list returned, which the API allows), the old ``/watch/`` paths, Foreground/Orphan deletion,
namespace deletion, Service cluster IPs and Endpoints, pod QoS class, rolling updates (see ``controller.py``),
protobuf/CBOR/YAML bodies.
"""

from __future__ import annotations

import asyncio
import copy
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from .controller import ControllerManager
from .registry import PODS, Registry, set_condition
from .selectors import label_matcher
from .server import ApiServer
from .store import Event, Obj, Store, resource_type

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


class KubeEmulator:
    def __init__(self, *, seed: int | None = None, controllers: bool = True) -> None:
        self.store = Store()
        self.registry = Registry(self.store, random.Random(seed))
        self.api = ApiServer(self.registry)
        self.controllers = ControllerManager(self.registry) if controllers else None
        self.url: str | None = None
        self.port: int | None = None
        self.on_change: list[Callable[[Event], None]] = []
        self._changed = asyncio.Event()
        self._dirty = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._controller_task: asyncio.Task[None] | None = None
        self.store.listeners.append(self._on_event)
        self.api.on_watch_started = self._changed.set
        for ns in DEFAULT_NAMESPACES:
            self.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1:``port`` (0: a free one; after ``stop()``, pass ``self.port`` to come back)."""
        if self._runner is not None:
            raise RuntimeError("the emulator is already running")
        runner = web.AppRunner(self.api.app(), shutdown_timeout=0.2, access_log=None)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        site = web.SockSite(runner, sock)
        await site.start()
        self._runner = runner
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        if self.controllers is not None:
            self._dirty.set()
            self._controller_task = asyncio.create_task(self._run_controllers(), name="kube-emulator-controllers")
        return self.url

    async def stop(self) -> None:
        """Go away like a crashed API server: watches are reset, new connections refused. State is kept."""
        if self._controller_task is not None:
            self._controller_task.cancel()
            await asyncio.gather(self._controller_task, return_exceptions=True)
            self._controller_task = None
        self.api.drop_watches(abrupt=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> KubeEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def kubeconfig(self, path: str | Path, token: str = "emulator-token", namespace: str = "default") -> Path:
        """Write a kubeconfig with a token user and one context pointing at this emulator."""
        if self.url is None:
            raise RuntimeError("start() the emulator before writing its kubeconfig")
        path = Path(path)
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator", "preferences": {},
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "emulator", "user": {"token": token}}],
            "contexts": [{"name": "emulator",
                          "context": {"cluster": "emulator", "user": "emulator", "namespace": namespace}}],
        }))
        return path

    async def _run_controllers(self) -> None:
        assert self.controllers is not None
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            try:
                self.controllers.reconcile()
            except Exception as e:  # an emulator bug: keep serving, but let the test see it
                self.errors.append(e)
            await asyncio.sleep(0)  # let API requests in between passes

    def _on_event(self, event: Event) -> None:
        self._changed.set()
        if event.rt.plural in ("pods", "deployments", "replicasets"):
            self._dirty.set()
        for callback in list(self.on_change):
            callback(event)

    # --- what tests look at ---------------------------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, str]]:
        """``(method, path)`` of every HTTP request, in order (query strings are in ``self.api.queries``)."""
        return self.api.requests

    @property
    def errors(self) -> list[Exception]:
        """Unexpected exceptions in HTTP handlers (answered with 500) and in the controllers: emulator bugs."""
        return self.api.errors

    @property
    def resource_version(self) -> str:
        return str(self.store.rv)

    @property
    def bookmark_interval(self) -> float:
        return self.api.bookmark_interval

    @bookmark_interval.setter
    def bookmark_interval(self, seconds: float) -> None:
        self.api.bookmark_interval = seconds

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        """A copy of one object (``kind``: plural, Kind or short name), or None."""
        obj = self.store.find(resource_type(kind), namespace, name)
        return copy.deepcopy(obj) if obj is not None else None

    def objects(self, kind: str, namespace: str | None = None, selector: str | None = None) -> list[Obj]:
        matches = label_matcher(selector)
        return [copy.deepcopy(o) for o in self.store.scan(resource_type(kind), namespace)
                if matches(o["metadata"].get("labels") or {})]

    def pods(self, namespace: str | None = "default", selector: str | None = None) -> list[Obj]:
        return self.objects("pods", namespace, selector)

    def create(self, obj: Obj) -> Obj:
        """Create any object directly (nodes, namespaces, ReplicaSets...), with the API server's rules."""
        rt = resource_type(obj["kind"])
        return copy.deepcopy(self.registry.create(rt, obj["metadata"].get("namespace"), obj, internal=True))

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> Any:
        """Re-check ``predicate`` after every change until it returns something truthy; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            self._changed.clear()
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.1))
            except TimeoutError:
                pass

    async def wait_watches(self, count: int, timeout: float = 5.0) -> None:
        """Until ``count`` watch streams have gone live since the emulator was made: headers and initial events
        sent, so a change made now reaches the watcher as a live event (and a dropped stream drops mid-body)."""
        await self.wait_for(lambda: self.api.watches_started >= count, timeout, f"{count} watch stream(s) to start")

    # --- kubelet, scheduler, etcd -------------------------------------------------------------------------

    def _pod(self, namespace: str, name: str) -> Obj:
        return copy.deepcopy(self.store.get(PODS, namespace, name))

    def _write_status(self, pod: Obj) -> Obj:
        meta = pod["metadata"]
        return self.registry.update(PODS, meta["namespace"], meta["name"], pod, subresource="status")

    def set_pod_running(self, namespace: str, name: str, ip: str, ready: bool = True, node: str = "node-1") -> Obj:
        """Scheduler binds the pod to ``node``; kubelet starts its containers and reports phase Running."""
        pod = self._pod(namespace, name)
        if pod["spec"].get("nodeName") != node:
            pod = copy.deepcopy(self.registry.bind(namespace, name, node))
        now = self.registry.now()
        status = pod.setdefault("status", {})
        status.update({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "10.0.0.1",
                       "hostIPs": [{"ip": "10.0.0.1"}]})
        status.setdefault("startTime", now)
        for type_ in ("PodReadyToStartContainers", "Initialized", "PodScheduled"):
            set_condition(pod, type_, "True", now)
        set_condition(pod, "ContainersReady", "True" if ready else "False", now)
        set_condition(pod, "Ready", "True" if ready else "False", now)
        status["containerStatuses"] = [{
            "name": c["name"], "image": c["image"], "imageID": f"docker.io/library/{c['name']}@sha256:0",
            "containerID": f"containerd://{name}-{c['name']}", "ready": ready, "started": True,
            "restartCount": 0, "state": {"running": {"startedAt": status["startTime"]}},
        } for c in pod["spec"]["containers"]]
        return copy.deepcopy(self._write_status(pod))

    def set_pod_ready(self, namespace: str, name: str, ready: bool) -> Obj:
        """Kubelet's readiness probe result (the Ready and ContainersReady conditions)."""
        pod = self._pod(namespace, name)
        now = self.registry.now()
        set_condition(pod, "ContainersReady", "True" if ready else "False", now)
        set_condition(pod, "Ready", "True" if ready else "False", now)
        for cs in pod["status"].get("containerStatuses") or []:
            cs["ready"] = ready
        return copy.deepcopy(self._write_status(pod))

    def set_pod_unschedulable(self, namespace: str, name: str, message: str) -> Obj:
        """The scheduler found no node: phase Pending, PodScheduled=False with reason Unschedulable."""
        pod = self._pod(namespace, name)
        pod.setdefault("status", {})["phase"] = "Pending"
        set_condition(pod, "PodScheduled", "False", self.registry.now(), "Unschedulable", message)
        return copy.deepcopy(self._write_status(pod))

    def set_pod_phase(self, namespace: str, name: str, phase: str, reason: str | None = None) -> Obj:
        """Kubelet reports a terminal or other phase (Failed pods are replaced by the deployment controller)."""
        pod = self._pod(namespace, name)
        pod.setdefault("status", {})["phase"] = phase
        if reason:
            pod["status"]["reason"] = reason
        return copy.deepcopy(self._write_status(pod))

    def finish_deletion(self, namespace: str, name: str) -> None:
        """Kubelet has stopped a terminating pod and deletes it with grace period 0: MODIFIED, then DELETED
        (unless finalizers hold it)."""
        pod = self.store.get(PODS, namespace, name)
        if not pod["metadata"].get("deletionTimestamp"):
            raise AssertionError(f"pod {namespace}/{name} is not terminating")
        self.registry.delete(PODS, namespace, name, grace=0)

    def compact(self) -> None:
        """etcd compaction: watches from a resourceVersion before now get 410 Expired."""
        self.store.compact()

    def drop_watches(self, abrupt: bool = True) -> None:
        """Close every open watch stream: by a connection reset (``abrupt``) or a clean end of the stream."""
        self.api.drop_watches(abrupt)

    def send_bookmarks(self) -> None:
        self.api.send_bookmarks()

    def forbid(self, verb: str, resource: str) -> None:
        """Answer 403 Forbidden to every ``verb`` (get, list, watch, create, update, patch, delete,
        deletecollection) on ``resource`` (plural, ``deployments/scale`` for a subresource): an RBAC gap."""
        self.api.forbidden.add((verb, resource))
