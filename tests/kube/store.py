"""The emulator's storage: resource types, objects, one global resourceVersion counter, history and watchers.

This is the etcd-plus-watch-cache layer: it knows nothing of HTTP or of per-kind rules (those live in
``registry.py``). Every write bumps the counter, stamps the object and appends one event to the history, which
feeds live watchers and lets a new watch replay "everything after resourceVersion N" until ``compact()``.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class ResourceType:
    plural: str
    kind: str
    group: str = ""
    version: str = "v1"
    namespaced: bool = True
    status_subresource: bool = False
    generation: bool = False  # the registry strategy maintains metadata.generation
    unconditional_update: bool = True  # PUT without metadata.resourceVersion is allowed
    create_on_update: bool = False  # PUT of a missing object creates it
    graceful: bool = False  # DELETE sets deletionTimestamp and the object stays (pods)
    writable: bool = True  # False: served read-only; the emulated controllers write it
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How error messages name the resource: ``pods``, ``deployments.apps``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("namespaces", "Namespace", namespaced=False, status_subresource=True, short_names=("ns",)),
    ResourceType("pods", "Pod", status_subresource=True, generation=True, graceful=True, short_names=("po",)),
    ResourceType("services", "Service", status_subresource=True, short_names=("svc",)),
    ResourceType("configmaps", "ConfigMap", short_names=("cm",)),
    ResourceType("secrets", "Secret"),
    ResourceType("persistentvolumeclaims", "PersistentVolumeClaim", status_subresource=True, short_names=("pvc",)),
    ResourceType("events", "Event", create_on_update=True, short_names=("ev",)),
    ResourceType("nodes", "Node", namespaced=False, status_subresource=True, short_names=("no",)),
    ResourceType("persistentvolumes", "PersistentVolume", namespaced=False, status_subresource=True,
                 short_names=("pv",)),
    ResourceType("deployments", "Deployment", "apps", status_subresource=True, generation=True,
                 short_names=("deploy",)),
    ResourceType("replicasets", "ReplicaSet", "apps", status_subresource=True, generation=True, writable=False,
                 short_names=("rs",)),
    ResourceType("leases", "Lease", "coordination.k8s.io", unconditional_update=False, create_on_update=True),
)
BY_PATH: dict[tuple[str, str, str], ResourceType] = {(r.group, r.version, r.plural): r for r in RESOURCES}


def resource_type(name: str) -> ResourceType:
    """Look a type up by plural, kind or short name, case-insensitively: ``pods``, ``Pod``, ``po``."""
    low = name.lower()
    for r in RESOURCES:
        if low in (r.plural, r.kind.lower(), *r.short_names) or low == r.kind.lower() + "s":
            return r
    raise KeyError(f"the emulator serves no resource called {name!r}")


class ApiError(Exception):
    """An error the API server answers with a ``Status`` object."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> Obj:
        out: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            out["details"] = self.details
        return out


def not_found(rt: ResourceType, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found',
                    {"name": name, "group": rt.group, "kind": rt.plural})


def conflict(rt: ResourceType, name: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {rt.qualified} "{name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                    {"name": name, "group": rt.group, "kind": rt.plural})


def invalid(rt: ResourceType, name: str, field_path: str, message: str) -> ApiError:
    return ApiError(422, "Invalid", f'{rt.kind}{"." + rt.group if rt.group else ""} "{name}" is invalid: '
                    f"{field_path}: {message}",
                    {"name": name, "group": rt.group, "kind": rt.kind,
                     "causes": [{"reason": "FieldValueInvalid", "message": message, "field": field_path}]})


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


@dataclass
class Event:
    """One write: ``obj`` is the object after it (for DELETED its last state), ``old`` the one before."""

    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    rt: ResourceType
    obj: Obj
    old: Obj | None = None


@dataclass(eq=False)
class Watcher:
    """A live watch: events that pass ``matches`` are queued; ``None`` in the queue ends the stream."""

    rt: ResourceType
    namespace: str | None
    matches: Callable[[Obj], bool]
    queue: asyncio.Queue[tuple[str, Obj] | None] = field(default_factory=asyncio.Queue)

    def offer(self, event: Event) -> None:
        if event.rt != self.rt:
            return
        if self.namespace is not None and event.obj["metadata"].get("namespace") != self.namespace:
            return
        now = self.matches(event.obj)
        if event.type == "MODIFIED" and event.old is not None:
            before = self.matches(event.old)
            # As the watch cache does: an object entering the selector is ADDED, one leaving it DELETED.
            if now and not before:
                self.queue.put_nowait(("ADDED", event.obj))
            elif before and not now:
                self.queue.put_nowait(("DELETED", event.obj))
            elif now:
                self.queue.put_nowait(("MODIFIED", event.obj))
        elif now:
            self.queue.put_nowait((event.type, event.obj))


class Store:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.rv = 1
        self.history: list[Event] = []
        self.compacted_rv = 1  # watches from a resourceVersion older than this get 410 Expired
        self.watchers: set[Watcher] = set()
        self.listeners: list[Callable[[Event], None]] = []

    @staticmethod
    def key(rt: ResourceType, namespace: str | None, name: str) -> tuple[str, str, str]:
        return (rt.plural, (namespace or "") if rt.namespaced else "", name)

    def find(self, rt: ResourceType, namespace: str | None, name: str) -> Obj | None:
        return self.objects.get(self.key(rt, namespace, name))

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self.find(rt, namespace, name)
        if obj is None:
            raise not_found(rt, name)
        return obj

    def scan(self, rt: ResourceType, namespace: str | None = None) -> Iterator[Obj]:
        for (plural, ns, _), obj in sorted(self.objects.items()):
            if plural == rt.plural and (namespace is None or ns == namespace):
                yield obj

    def by_uid(self, uid: str) -> Obj | None:
        return next((o for o in self.objects.values() if o["metadata"].get("uid") == uid), None)

    def write(self, type_: str, rt: ResourceType, obj: Obj, old: Obj | None = None) -> Obj:
        """Store (or for DELETED remove) ``obj`` under a new resourceVersion; notify watchers and listeners."""
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = self.key(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if type_ == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        event = Event(self.rv, type_, rt, obj, old)
        self.history.append(event)
        for w in list(self.watchers):
            w.offer(event)
        for listener in list(self.listeners):
            listener(event)
        return obj

    def compact(self) -> None:
        """Forget the history: a watch from any resourceVersion before now gets 410 Expired."""
        self.history.clear()
        self.compacted_rv = self.rv

    def events_since(self, rv: int) -> list[Event]:
        if rv < self.compacted_rv:
            raise ApiError(410, "Expired", f"too old resource version: {rv} ({self.compacted_rv})")
        return [e for e in self.history if e.rv > rv]
