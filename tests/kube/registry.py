"""Per-kind rules of the API server's registry (``pkg/registry/*/strategy.go`` and the generic ``Store``).

What a write does beyond storing: system metadata, defaults, the validation the emulator models, status
subresources, optimistic concurrency, generation, graceful deletion and finalizers, the scale subresource.
Everything raises ``ApiError`` the way the real server answers.
"""

from __future__ import annotations

import copy
import json
import random
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from . import patches
from .selectors import label_selector_matches, selector_string, valid_label_key, valid_label_value
from .store import ApiError, Obj, ResourceType, Store, bad_request, conflict, invalid, not_found, resource_type

NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # apimachinery utilrand: no vowels, no confusable characters
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MUTABLE_POD_SPEC = ("activeDeadlineSeconds", "tolerations", "terminationGracePeriodSeconds", "schedulingGates")
PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json", "application/strategic-merge-patch+json")

NAMESPACES, PODS, DEPLOYMENTS = resource_type("namespaces"), resource_type("pods"), resource_type("deployments")


def rfc3339(t: datetime) -> str:
    """metav1.Time: UTC, whole seconds."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> datetime:
    return datetime.strptime(text[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)


class Registry:
    def __init__(self, store: Store, rng: random.Random, clock: Callable[[], datetime] = lambda: datetime.now(UTC)):
        self.store, self.rng, self.clock = store, rng, clock

    def now(self) -> str:
        return rfc3339(self.clock())

    # --- create ---------------------------------------------------------------------------------------------

    def create(self, rt: ResourceType, namespace: str | None, body: Any, *, internal: bool = False) -> Obj:
        if not rt.writable and not internal:
            raise _read_only(rt)
        obj = self._decode(rt, namespace, body)
        meta = obj["metadata"]
        if meta.get("resourceVersion"):
            raise ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(rt, "", "metadata.name", "Required value: name or generateName is required")
            while True:  # the server retries a generated name that is taken
                meta["name"] = meta["generateName"] + "".join(self.rng.choices(NAME_ALPHABET, k=5))
                if self.store.find(rt, namespace, meta["name"]) is None:
                    break
        if rt.namespaced and self.store.find(NAMESPACES, None, namespace or "") is None:
            raise not_found(NAMESPACES, namespace or "")
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            meta.pop(k, None)
        meta["uid"] = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
        meta["creationTimestamp"] = self.now()
        if rt.generation:
            meta["generation"] = 1
        if rt.kind == "Pod":
            obj["status"] = {"phase": "Pending"}
        elif rt.kind in ("Deployment", "ReplicaSet"):
            obj["status"] = {}
        elif rt.kind == "Namespace":
            obj["status"] = {"phase": "Active"}
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        self._validate(rt, obj, None)
        if self.store.find(rt, namespace, meta["name"]) is not None:
            raise ApiError(409, "AlreadyExists", f'{rt.qualified} "{meta["name"]}" already exists',
                           {"name": meta["name"], "group": rt.group, "kind": rt.plural})
        return self.store.write("ADDED", rt, obj)

    # --- update ---------------------------------------------------------------------------------------------

    def update(self, rt: ResourceType, namespace: str | None, name: str, body: Any, *,
               subresource: str | None = None, internal: bool = False) -> Obj:
        """PUT: optimistic concurrency on ``metadata.resourceVersion``; status only through ``/status``."""
        if not rt.writable and not internal:
            raise _read_only(rt)
        obj = self._decode(rt, namespace, body)
        meta = obj["metadata"]
        if meta.get("name") != name:
            raise bad_request(f"the name of the object ({meta.get('name', '')}) does not match the name on the "
                              f"URL ({name})")
        old = self.store.find(rt, namespace, name)
        if old is None:
            if rt.create_on_update and subresource is None:
                meta.pop("resourceVersion", None)
                return self.create(rt, namespace, obj, internal=internal)
            raise not_found(rt, name)
        sent_rv = meta.get("resourceVersion")
        if not sent_rv and not rt.unconditional_update:
            raise invalid(rt, name, "metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update")
        if sent_rv and sent_rv != old["metadata"]["resourceVersion"]:
            raise conflict(rt, name)
        old_meta = old["metadata"]
        if meta.get("uid") and meta["uid"] != old_meta["uid"]:
            raise ApiError(409, "Conflict", f"Precondition failed: UID in precondition: {meta['uid']}, UID in "
                           f"object meta: {old_meta['uid']}")
        if subresource == "status":
            new = copy.deepcopy(old)
            new["status"] = obj.get("status")
            if new["status"] is None:
                del new["status"]
        else:
            new = obj
            for k in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
                if k in old_meta:
                    new["metadata"][k] = old_meta[k]
                else:
                    new["metadata"].pop(k, None)
            if rt.status_subresource:
                new.pop("status", None)
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
            self._validate(rt, new, old)
            if rt.generation and self._spec_changed(rt, new, old):
                new["metadata"]["generation"] = old_meta.get("generation", 0) + 1
        new["metadata"]["resourceVersion"] = old_meta["resourceVersion"]
        if new == old:
            return old  # a no-op write stores nothing and emits no event, as in etcd3's GuaranteedUpdate
        written = self.store.write("MODIFIED", rt, new, old)
        if written["metadata"].get("deletionTimestamp") and not written["metadata"].get("finalizers") and (
                not rt.graceful or written["metadata"].get("deletionGracePeriodSeconds") == 0):
            return self.store.write("DELETED", rt, written, written)  # the last finalizer went away
        return written

    @staticmethod
    def _spec_changed(rt: ResourceType, new: Obj, old: Obj) -> bool:
        if new.get("spec") != old.get("spec"):
            return True
        # Deployments also count annotation changes: they are copied to the ReplicaSets.
        return rt.kind == "Deployment" and new["metadata"].get("annotations") != old["metadata"].get("annotations")

    def patch(self, rt: ResourceType, namespace: str | None, name: str, content_type: str, raw: bytes, *,
              subresource: str | None = None) -> Obj:
        if subresource == "scale":
            current = self.get_scale(rt, namespace, name)
            return self.update_scale(rt, namespace, name, self._apply_patch("Scale", current, content_type, raw))
        old = self.store.get(rt, namespace, name)
        return self.update(rt, namespace, name, self._apply_patch(rt.kind, self.external(rt, old), content_type, raw),
                           subresource=subresource)

    @staticmethod
    def _apply_patch(kind: str, current: Obj, content_type: str, raw: bytes) -> Any:
        ctype = content_type.split(";")[0].strip().lower()
        if ctype not in PATCH_TYPES:
            # Server-side apply (application/apply-patch+yaml) is not modelled.
            raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                           f"accepted media types include: {', '.join(PATCH_TYPES)}")
        try:
            doc = json.loads(raw or b"null")
        except ValueError as e:
            raise bad_request(f"error decoding patch: {e}") from None
        try:
            if ctype == "application/merge-patch+json":
                return patches.merge_patch(current, doc)
            if ctype == "application/json-patch+json":
                return patches.json_patch(current, doc)
            return patches.strategic_merge_patch(current, doc, kind)
        except patches.PatchError as e:
            raise ApiError(e.code, "BadRequest" if e.code == 400 else "Invalid", str(e)) from None

    # --- delete ---------------------------------------------------------------------------------------------

    def delete(self, rt: ResourceType, namespace: str | None, name: str, grace: int | None = None,
               preconditions: dict[str, Any] | None = None, propagation: str | None = None,
               *, internal: bool = False) -> tuple[Obj, bool]:
        """Returns the object's last state and whether it is gone (False: terminating or held by finalizers)."""
        if rt.kind == "Namespace" or (not rt.writable and not internal):
            raise ApiError(405, "MethodNotAllowed", f"the emulator does not model deleting {rt.plural}")
        if propagation not in (None, "Background"):
            raise bad_request(f"the emulator models propagationPolicy=Background only, not {propagation}")
        obj = copy.deepcopy(self.store.get(rt, namespace, name))
        meta = obj["metadata"]
        for key in ("uid", "resourceVersion"):
            want = (preconditions or {}).get(key)
            if want and want != meta[key]:
                raise ApiError(409, "Conflict", f"Precondition failed: {key} in precondition: {want}, {key} in "
                               f"object meta: {meta[key]}")
        if meta.get("deletionTimestamp"):
            current = meta.get("deletionGracePeriodSeconds")
            if rt.graceful and current and grace is not None and grace < current:
                # Only a shorter grace period may be given to an object already terminating.
                when = parse_time(meta["deletionTimestamp"]) - timedelta(seconds=current - grace)
                meta["deletionTimestamp"], meta["deletionGracePeriodSeconds"] = rfc3339(when), grace
                old = self.store.get(rt, namespace, name)
                return self._finish_delete(rt, self.store.write("MODIFIED", rt, obj, old))
            if not current and not meta.get("finalizers"):
                return self.store.write("DELETED", rt, obj, obj), True
            return self.store.get(rt, namespace, name), False
        if rt.graceful:
            spec, status = obj.get("spec") or {}, obj.get("status") or {}
            period = grace if grace is not None else spec.get("terminationGracePeriodSeconds", 0)
            if not spec.get("nodeName") or status.get("phase") in ("Failed", "Succeeded"):
                period = 0  # an unscheduled or finished pod has nothing to stop: it goes at once
            period = 1 if period < 0 else period
            meta["deletionTimestamp"] = rfc3339(self.clock() + timedelta(seconds=period))
            meta["deletionGracePeriodSeconds"] = period
        elif meta.get("finalizers"):
            meta["deletionTimestamp"], meta["deletionGracePeriodSeconds"] = self.now(), 0
        else:
            return self.store.write("DELETED", rt, obj, obj), True
        if meta.get("generation"):
            meta["generation"] += 1
        return self._finish_delete(rt, self.store.write("MODIFIED", rt, obj, self.store.get(rt, namespace, name)))

    def _finish_delete(self, rt: ResourceType, obj: Obj) -> tuple[Obj, bool]:
        meta = obj["metadata"]
        if meta.get("deletionGracePeriodSeconds") == 0 and not meta.get("finalizers"):
            return self.store.write("DELETED", rt, obj, obj), True
        return obj, False

    # --- pods/binding, deployments/scale ------------------------------------------------------------------

    def bind(self, namespace: str, name: str, node: str) -> Obj:
        """What the scheduler's POST pods/{name}/binding does: set spec.nodeName once, mark PodScheduled."""
        pod = copy.deepcopy(self.store.get(PODS, namespace, name))
        current = pod["spec"].get("nodeName")
        if current and current != node:
            raise ApiError(409, "Conflict", f"pod {name} is already assigned to node \"{current}\"")
        if meta_deleting(pod):
            raise ApiError(409, "Conflict", f"pod {name} is being deleted, cannot be assigned to a host")
        pod["spec"]["nodeName"] = node
        set_condition(pod, "PodScheduled", "True", self.now())
        return self.store.write("MODIFIED", PODS, pod, self.store.get(PODS, namespace, name))

    def get_scale(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        if rt.kind not in ("Deployment", "ReplicaSet"):
            raise not_found(rt, name)
        obj = self.store.get(rt, namespace, name)
        meta = obj["metadata"]
        return {
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")},
            "spec": {"replicas": obj["spec"].get("replicas", 0)},
            "status": {"replicas": (obj.get("status") or {}).get("replicas", 0),
                       "selector": selector_string(obj["spec"].get("selector") or {})},
        }

    def update_scale(self, rt: ResourceType, namespace: str | None, name: str, body: Any) -> Obj:
        if not rt.writable:
            raise _read_only(rt)
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise bad_request("the body must be an autoscaling/v1 Scale")
        obj = copy.deepcopy(self.store.get(rt, namespace, name))
        sent_rv = (body.get("metadata") or {}).get("resourceVersion")
        if sent_rv and sent_rv != obj["metadata"]["resourceVersion"]:
            raise conflict(rt, name)
        replicas = (body.get("spec") or {}).get("replicas", 0)  # omitempty: an absent count is zero
        if not isinstance(replicas, int) or replicas < 0:
            raise ApiError(422, "Invalid", f'Scale.autoscaling "{name}" is invalid: spec.replicas: Invalid value: '
                           f"{replicas}: must be greater than or equal to 0")
        obj["spec"]["replicas"] = replicas
        self.update(rt, namespace, name, obj, internal=True)
        return self.get_scale(rt, namespace, name)

    # --- shared ---------------------------------------------------------------------------------------------

    @staticmethod
    def external(rt: ResourceType, obj: Obj) -> Obj:
        out = copy.deepcopy(obj)
        out["apiVersion"], out["kind"] = rt.api_version, rt.kind
        return out

    def _decode(self, rt: ResourceType, namespace: str | None, body: Any) -> Obj:
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise bad_request(f"the body of the request must be a {rt.kind} object")
        if body.get("kind") not in (None, rt.kind) or body.get("apiVersion") not in (None, rt.api_version):
            raise bad_request(f"the API version in the data ({body.get('apiVersion')}) does not match the expected "
                              f"API version ({rt.api_version})" if body.get("kind") in (None, rt.kind) else
                              f"the kind in the data ({body.get('kind')}) does not match {rt.kind}")
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta = obj.setdefault("metadata", {})
        if rt.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                                  "request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        meta.pop("managedFields", None)  # server-side apply's field ownership is not modelled
        apply_defaults(rt, obj)
        return obj

    def _validate(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        meta, name = obj["metadata"], obj["metadata"]["name"]
        if len(name) > 253 or not _SUBDOMAIN.match(name):
            raise invalid(rt, name, "metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 subdomain '
                          "must consist of lower case alphanumeric characters, '-' or '.'")
        for key, value in (meta.get("labels") or {}).items():
            if not valid_label_key(key) or not isinstance(value, str) or not valid_label_value(value):
                raise invalid(rt, name, "metadata.labels", f'Invalid value: "{key}={value}"')
        for key, value in (meta.get("annotations") or {}).items():
            if not isinstance(value, str):
                raise invalid(rt, name, f"metadata.annotations[{key}]", "Invalid value: must be a string")
        if rt.kind == "Pod":
            _validate_pod_spec(rt, name, "spec", obj.get("spec") or {})
            if old is not None and _immutable_pod_spec(obj["spec"]) != _immutable_pod_spec(old["spec"]):
                raise invalid(rt, name, "spec", "Forbidden: pod updates may not change fields other than "
                              "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
                              "`spec.tolerations` (only additions to existing tolerations),"
                              "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously "
                              "negative)")
        if rt.kind in ("Deployment", "ReplicaSet"):
            spec = obj.get("spec") or {}
            selector = spec.get("selector") or {}
            if not selector.get("matchLabels") and not selector.get("matchExpressions"):
                raise invalid(rt, name, "spec.selector", "Required value")
            if not isinstance(spec.get("replicas"), int) or spec["replicas"] < 0:
                raise invalid(rt, name, "spec.replicas", f"Invalid value: {spec.get('replicas')}: must be greater "
                              "than or equal to 0")
            template = spec.get("template") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            if not label_selector_matches(selector, labels):
                raise invalid(rt, name, "spec.template.metadata.labels", f"Invalid value: {labels}: `selector` does "
                              "not match template `labels`")
            _validate_pod_spec(rt, name, "spec.template.spec", template.get("spec") or {})
            if old is not None and selector != (old.get("spec") or {}).get("selector"):
                raise invalid(rt, name, "spec.selector", f"Invalid value: {selector}: field is immutable")


def _read_only(rt: ResourceType) -> ApiError:
    return ApiError(405, "MethodNotAllowed", f"the emulator serves {rt.plural} read-only: its controllers write them")


def meta_deleting(obj: Obj) -> bool:
    return bool(obj["metadata"].get("deletionTimestamp"))


def set_condition(obj: Obj, type_: str, status: str, now: str, reason: str | None = None,
                  message: str | None = None) -> None:
    """Set a status condition; lastTransitionTime changes only when the status does."""
    conditions = obj.setdefault("status", {}).setdefault("conditions", [])
    cond = next((c for c in conditions if c.get("type") == type_), None)
    if cond is None:
        cond = {"type": type_}
        conditions.append(cond)
    if cond.get("status") != status:
        cond["lastTransitionTime"] = now
    cond["status"] = status
    cond["lastProbeTime"] = None
    for key, value in (("reason", reason), ("message", message)):
        if value is None:
            cond.pop(key, None)
        else:
            cond[key] = value


def _validate_pod_spec(rt: ResourceType, name: str, path: str, spec: Obj) -> None:
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise invalid(rt, name, f"{path}.containers", "Required value")
    for i, c in enumerate(containers):
        if not isinstance(c, dict) or not _DNS_LABEL.match(str(c.get("name", ""))):
            raise invalid(rt, name, f"{path}.containers[{i}].name", "Required value: a DNS-1123 label")
        if not c.get("image"):
            raise invalid(rt, name, f"{path}.containers[{i}].image", "Required value")


def _immutable_pod_spec(spec: Obj) -> Obj:
    out = {k: v for k, v in spec.items() if k not in MUTABLE_POD_SPEC}
    for key in ("containers", "initContainers"):
        if key in out:
            out[key] = [{k: v for k, v in c.items() if k != "image"} for c in out[key]]
    return out


def apply_defaults(rt: ResourceType, obj: Obj) -> None:
    """The defaults the emulator applies on decode (a subset of the real ``SetDefaults_*`` functions)."""
    if rt.kind == "Pod":
        _pod_spec_defaults(obj.setdefault("spec", {}))
    elif rt.kind in ("Deployment", "ReplicaSet"):
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        if rt.kind == "Deployment":
            spec.setdefault("revisionHistoryLimit", 10)
            spec.setdefault("progressDeadlineSeconds", 600)
            strategy = spec.setdefault("strategy", {})
            strategy.setdefault("type", "RollingUpdate")
            if strategy["type"] == "RollingUpdate":
                strategy.setdefault("rollingUpdate", {}).setdefault("maxUnavailable", "25%")
                strategy["rollingUpdate"].setdefault("maxSurge", "25%")
        template = spec.get("template")
        if isinstance(template, dict):
            _pod_spec_defaults(template.setdefault("spec", {}))


def _pod_spec_defaults(spec: Obj) -> None:
    if not isinstance(spec, dict):
        return
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        if not isinstance(c, dict):
            continue
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        image = str(c.get("image", ""))
        tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
        c.setdefault("imagePullPolicy", "Always" if not tagged or image.endswith(":latest") else "IfNotPresent")
        c.setdefault("resources", {})
        for port in c.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
