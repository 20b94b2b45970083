"""The HTTP face of the emulator: REST paths, query parameters, Status errors, watch streams, discovery.

Paths are those of the real API (``/api/v1/namespaces/{ns}/pods/{name}``, ``/apis/apps/v1/...``, cluster-scoped
and all-namespaces collections, ``/status``, ``/scale`` and ``/binding`` subresources). Any
``Authorization: Bearer`` token is accepted; without one the answer is 401.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .registry import PODS, Registry
from .selectors import SelectorError, field_matcher, label_matcher
from .store import BY_PATH, RESOURCES, ApiError, Obj, ResourceType, Watcher, bad_request

VERSION = {"major": "1", "minor": "33", "gitVersion": "v1.33.0-lbproxy-emulator", "gitCommit": "0" * 40,
           "gitTreeState": "clean", "buildDate": "2025-04-23T00:00:00Z", "goVersion": "go1.24.2", "compiler": "gc",
           "platform": "linux/amd64"}
GROUP_VERSIONS = sorted({(r.group, r.version) for r in RESOURCES})
SUBRESOURCES = {"pods": ("status", "binding"), "deployments": ("status", "scale"), "replicasets": ("status", "scale"),
                "services": ("status",), "nodes": ("status",), "persistentvolumeclaims": ("status",),
                "persistentvolumes": ("status",), "namespaces": ("status",)}
PUBLIC = ("/version", "/healthz", "/livez", "/readyz")


@dataclass
class Target:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None


def _bool(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(obj), content_type="application/json")


class ApiServer:
    def __init__(self, registry: Registry) -> None:
        self.registry, self.store = registry, registry.store
        self.requests: list[tuple[str, str]] = []
        self.queries: list[tuple[str, str, dict[str, str]]] = []
        self.streams: dict[Watcher, web.Request] = {}
        self.bookmark_interval = 60.0
        self.errors: list[Exception] = []  # unexpected exceptions in handlers (tests assert there are none)
        self.forbidden: set[tuple[str, str]] = set()  # (verb, resource[/subresource]) answered 403 Forbidden
        self.watches_started = 0  # watch streams that went live (initial events sent), ever
        self.on_watch_started: Callable[[], None] = lambda: None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        self.queries.append((request.method, request.path, dict(request.query)))
        if request.path not in PUBLIC and not request.headers.get("Authorization", "").startswith("Bearer "):
            return _json(ApiError(401, "Unauthorized", "Unauthorized").status(), 401)
        try:
            return await handler(request)  # type: ignore[no-any-return]
        except ApiError as e:
            return _json(e.status(), e.code)
        except Exception as e:  # an emulator bug: answer like the real server's 500, and remember it
            self.errors.append(e)
            return _json(ApiError(500, "InternalError", f"emulator error: {e!r}").status(), 500)

    # --- routing --------------------------------------------------------------------------------------------

    def _target(self, path: str) -> Target | None:
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 3 and parts[0] == "api":
            group, version, rest = "", parts[1], parts[2:]
        elif len(parts) >= 4 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and not (len(rest) == 3 and rest[2] in ("status", "finalize")):
            namespace, rest = rest[1], rest[2:]
        rt = BY_PATH.get((group, version, rest[0]))
        if rt is None or len(rest) > 3 or (namespace is not None and not rt.namespaced):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if rt.namespaced and namespace is None and len(rest) > 1:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        sub = rest[2] if len(rest) == 3 else None
        if sub is not None and sub not in SUBRESOURCES.get(rt.plural, ()):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return Target(rt, namespace, rest[1] if len(rest) > 1 else None, sub)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        discovery = self._discovery(request.path)
        if discovery is not None:
            if request.method != "GET":
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method")
            return _json(discovery)
        t = self._target(request.path)
        if t is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        m, q = request.method, request.query
        self._authorize(t, m, q)
        if t.name is None:
            if m == "GET":
                return await self._watch(request, t) if _bool(q.get("watch")) else self._list(t, q)
            if m == "POST":
                return _json(self._out(t.rt, self.registry.create(t.rt, t.namespace, await _body(request))), 201)
            if m == "DELETE":
                return await self._delete_collection(request, t)
        elif t.subresource == "scale":
            if m == "GET":
                return _json(self.registry.get_scale(t.rt, t.namespace, t.name))
            if m == "PUT":
                return _json(self.registry.update_scale(t.rt, t.namespace, t.name, await _body(request)))
            if m == "PATCH":
                return _json(self.registry.patch(t.rt, t.namespace, t.name, request.content_type,
                                                 await request.read(), subresource="scale"))
        elif t.subresource == "binding":
            if m == "POST":
                body = await _body(request)
                node = ((body or {}).get("target") or {}).get("name")
                if not node:
                    raise ApiError(422, "Invalid", "Binding: target.name: Required value")
                self.registry.bind(t.namespace or "", t.name, node)
                return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                              "code": 201}, 201)
        elif m == "GET":
            return _json(self._out(t.rt, self.store.get(t.rt, t.namespace, t.name)))
        elif m == "PUT":
            obj = self.registry.update(t.rt, t.namespace, t.name, await _body(request), subresource=t.subresource)
            return _json(self._out(t.rt, obj))
        elif m == "PATCH":
            obj = self.registry.patch(t.rt, t.namespace, t.name, request.content_type, await request.read(),
                                      subresource=t.subresource)
            return _json(self._out(t.rt, obj))
        elif m == "DELETE" and t.subresource is None:
            return await self._delete(request, t)
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource "
                       f"({m} {request.path})")

    def _authorize(self, t: Target, method: str, q: Any) -> None:
        """403 for a (verb, resource) in ``self.forbidden``, worded like the real RBAC authorizer's refusal."""
        if not self.forbidden:
            return
        if method == "GET":
            verb = "get" if t.name is not None else "watch" if _bool(q.get("watch")) else "list"
        elif method == "DELETE":
            verb = "delete" if t.name is not None else "deletecollection"
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())
        resource = t.rt.plural + (f"/{t.subresource}" if t.subresource else "")
        if (verb, resource) not in self.forbidden:
            return
        scope = f'in the namespace "{t.namespace}"' if t.namespace else "at the cluster scope"
        details = {"kind": t.rt.plural, **({"group": t.rt.group} if t.rt.group else {}),
                   **({"name": t.name} if t.name else {})}
        named = f' "{t.name}"' if t.name else ""
        raise ApiError(403, "Forbidden", f'{t.rt.qualified}{named} is forbidden: User '
                       f'"system:serviceaccount:default:emulator" cannot {verb} resource "{resource}" in API group '
                       f'"{t.rt.group}" {scope}', details)

    # --- handlers -------------------------------------------------------------------------------------------

    @staticmethod
    def _out(rt: ResourceType, obj: Obj) -> Obj:
        return Registry.external(rt, obj)

    def _matcher(self, t: Target, q: Any) -> Any:
        try:
            labels = label_matcher(q.get("labelSelector"))
            fields = field_matcher(t.rt.plural, q.get("fieldSelector"))
        except SelectorError as e:
            raise bad_request(f"unable to parse requirement: {e}") from None
        return lambda obj: labels(obj["metadata"].get("labels") or {}) and fields(obj)

    def _list(self, t: Target, q: Any) -> web.Response:
        # resourceVersion (NotOlderThan) and limit are accepted: the emulator always serves the latest state
        # in one chunk, which the API allows ("the server may ignore limit").
        if q.get("resourceVersionMatch") == "Exact" and q.get("resourceVersion"):
            self.store.events_since(int(q["resourceVersion"]))  # 410 when compacted away
        matches = self._matcher(t, q)
        items = []
        for obj in self.store.scan(t.rt, t.namespace):
            if matches(obj):
                item = dict(obj)
                item.pop("kind", None)  # list items carry no kind/apiVersion, as from the real server
                item.pop("apiVersion", None)
                items.append(item)
        return _json({"kind": t.rt.kind + "List", "apiVersion": t.rt.api_version,
                      "metadata": {"resourceVersion": str(self.store.rv)}, "items": items})

    async def _delete(self, request: web.Request, t: Target) -> web.Response:
        grace, pre, propagation = await _delete_options(request)
        obj, gone = self.registry.delete(t.rt, t.namespace, t.name or "", grace, pre, propagation)
        if t.rt is PODS or not gone:  # pods return the object; a finalizer-held object comes back with 202
            return _json(self._out(t.rt, obj), 200 if gone or t.rt is PODS else 202)
        meta = obj["metadata"]
        return _json({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                      "details": {"name": meta["name"], "group": t.rt.group, "kind": t.rt.plural,
                                  "uid": meta["uid"]}})

    async def _delete_collection(self, request: web.Request, t: Target) -> web.Response:
        grace, _, propagation = await _delete_options(request)
        matches = self._matcher(t, request.query)
        deleted = []
        for obj in [o for o in self.store.scan(t.rt, t.namespace) if matches(o)]:
            last, _ = self.registry.delete(t.rt, obj["metadata"].get("namespace"), obj["metadata"]["name"],
                                           grace, None, propagation)
            deleted.append(last)
        return _json({"kind": t.rt.kind + "List", "apiVersion": t.rt.api_version,
                      "metadata": {"resourceVersion": str(self.store.rv)}, "items": deleted})

    async def _watch(self, request: web.Request, t: Target) -> web.StreamResponse:
        q = request.query
        matches = self._matcher(t, q)
        timeout = float(q["timeoutSeconds"]) if q.get("timeoutSeconds") else 1800.0
        bookmarks = _bool(q.get("allowWatchBookmarks"))
        rv_text = q.get("resourceVersion") or ""
        watcher = Watcher(t.rt, t.namespace, matches)
        initial: list[tuple[str, Obj]] = []
        if rv_text in ("", "0") or _bool(q.get("sendInitialEvents")):
            # "Get state and start at most recent": synthetic ADDED for what exists now, then live events.
            initial = [("ADDED", o) for o in self.store.scan(t.rt, t.namespace) if matches(o)]
        else:
            try:
                since = int(rv_text)
            except ValueError:
                raise bad_request(f"invalid resourceVersion {rv_text!r}") from None
            try:
                for event in self.store.events_since(since):
                    watcher.offer(event)  # replayed through the same selector transitions as live events
            except ApiError as e:
                # The real server answers 200, sends one ERROR event (a 410 Status) and ends the stream.
                initial = [("ERROR", e.status())]
                watcher.queue.put_nowait(None)
        if not initial or initial[0][0] != "ERROR":
            self.store.watchers.add(watcher)  # in the same step as the snapshot or replay: no event is lost
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        self.streams[watcher] = request
        try:
            await resp.prepare(request)
            for type_, obj in initial:
                await self._send(resp, t.rt, type_, obj)
            if bookmarks and _bool(q.get("sendInitialEvents")):
                await self._bookmark(resp, t.rt, {"k8s.io/initial-events-end": "true"})
            if watcher in self.store.watchers:  # live from here on: what is written now arrives as an event
                self.watches_started += 1
                self.on_watch_started()
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + self.bookmark_interval
            while (now := time.monotonic()) < deadline:
                wait = min(deadline, next_bookmark) - now if bookmarks else deadline - now
                try:
                    # Wake up at least once a second to notice a client that went away.
                    item = await asyncio.wait_for(watcher.queue.get(), min(max(wait, 0), 1.0))
                except TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        break
                    item = ("BOOKMARK", {}) if bookmarks and time.monotonic() >= next_bookmark else None
                    if item is None:
                        continue
                if item is None:
                    break
                if item[0] == "BOOKMARK":
                    if bookmarks:
                        await self._bookmark(resp, t.rt)
                        next_bookmark = time.monotonic() + self.bookmark_interval
                    continue
                await self._send(resp, t.rt, *item)
            await resp.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away, or drop_watches() reset the connection
        finally:
            self.store.watchers.discard(watcher)
            self.streams.pop(watcher, None)
        return resp

    async def _send(self, resp: web.StreamResponse, rt: ResourceType, type_: str, obj: Obj) -> None:
        body = obj if type_ == "ERROR" else self._out(rt, obj)
        await resp.write(json.dumps({"type": type_, "object": body}).encode() + b"\n")

    async def _bookmark(self, resp: web.StreamResponse, rt: ResourceType,
                        annotations: dict[str, str] | None = None) -> None:
        meta: Obj = {"resourceVersion": str(self.store.rv)}
        if annotations:
            meta["annotations"] = annotations
        await resp.write(json.dumps({"type": "BOOKMARK", "object": {
            "kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}}).encode() + b"\n")

    def send_bookmarks(self) -> None:
        """A BOOKMARK now on every watch that allows them (the real server sends one about once a minute)."""
        for watcher in list(self.streams):
            watcher.queue.put_nowait(("BOOKMARK", {}))

    def drop_watches(self, abrupt: bool = True) -> None:
        """End every open watch: ``abrupt`` resets the TCP connection, otherwise the stream ends cleanly."""
        for watcher, request in list(self.streams.items()):
            self.store.watchers.discard(watcher)
            if abrupt and request.transport is not None:
                request.transport.abort()
            watcher.queue.put_nowait(None)

    # --- discovery ------------------------------------------------------------------------------------------

    def _discovery(self, path: str) -> Obj | None:
        path = path.rstrip("/") or "/"
        if path == "/version":
            return VERSION
        if path in ("/healthz", "/livez", "/readyz"):
            return {"status": "ok"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}
        if path == "/apis":
            groups = [{"name": g, "versions": [{"groupVersion": f"{g}/{v}", "version": v}],
                       "preferredVersion": {"groupVersion": f"{g}/{v}", "version": v}}
                      for g, v in GROUP_VERSIONS if g]
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        for group, version in GROUP_VERSIONS:
            if path == (f"/apis/{group}/{version}" if group else f"/api/{version}"):
                return {"kind": "APIResourceList", "apiVersion": "v1",
                        "groupVersion": f"{group}/{version}" if group else version,
                        "resources": self._resources(group, version)}
        return None

    @staticmethod
    def _resources(group: str, version: str) -> list[Obj]:
        out: list[Obj] = []
        for r in RESOURCES:
            if (r.group, r.version) != (group, version):
                continue
            verbs = ["get", "list", "watch"] + (["create", "update", "patch", "delete", "deletecollection"]
                                                if r.writable else [])
            out.append({"name": r.plural, "singularName": r.kind.lower(), "namespaced": r.namespaced,
                        "kind": r.kind, "verbs": verbs, "shortNames": list(r.short_names)})
            for sub in SUBRESOURCES.get(r.plural, ()):
                kind = {"scale": "Scale", "binding": "Binding"}.get(sub, r.kind)
                out.append({"name": f"{r.plural}/{sub}", "singularName": "", "namespaced": r.namespaced,
                            "kind": kind, "verbs": ["create"] if sub == "binding" else ["get", "patch", "update"]})
        return out


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError as e:
        raise bad_request(f"the body of the request is not valid JSON: {e}") from None


async def _delete_options(request: web.Request) -> tuple[int | None, dict[str, Any], str | None]:
    """DeleteOptions come as query parameters or as a JSON body; the body wins, as on the real server."""
    q = request.query
    body = await _body(request) or {}
    if not isinstance(body, dict):
        raise bad_request("the body of a DELETE must be DeleteOptions")
    grace = body.get("gracePeriodSeconds", q.get("gracePeriodSeconds"))
    try:
        grace = None if grace is None else int(grace)
    except ValueError:
        raise bad_request(f"invalid gracePeriodSeconds {grace!r}") from None
    return grace, body.get("preconditions") or {}, body.get("propagationPolicy", q.get("propagationPolicy"))

