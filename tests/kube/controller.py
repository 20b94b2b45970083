"""The emulated kube-controller-manager: a deployment controller (with ReplicaSets as bookkeeping) and a
background garbage collector.

What is modelled: each Deployment owns one ReplicaSet per pod template (``{deployment}-{pod-template-hash}``);
the Deployment's active pods (owned by any of its ReplicaSets, not terminating, not Succeeded/Failed) are kept at
``spec.replicas``. New pods always come from the current template's ReplicaSet. On scale-down the victims are
chosen as the ReplicaSet controller does (``getPodsToDelete`` with ``ActivePodsWithRanks``, LogarithmicScaleDown
on) among all of the Deployment's active pods, and deleted through the graceful DELETE path.

Not modelled: rolling updates (a template change starts no rollout; old-template pods stay until a scale-down
removes them), maxSurge/maxUnavailable, minReadySeconds beyond "ready counts as available", status conditions,
adoption of orphan pods, ReplicaSets without a Deployment, Foreground/Orphan deletion.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections import Counter
from datetime import datetime
from typing import Any

from .registry import PODS, Registry, meta_deleting, parse_time
from .selectors import label_selector_matches
from .store import ApiError, Obj, resource_type

DEPLOYMENTS, REPLICASETS = resource_type("deployments"), resource_type("replicasets")
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
PHASE_ORDINAL = {"Pending": 0, "Unknown": 1, "Running": 2}


def template_hash(template: Obj, collision_count: int = 0) -> str:
    """The shape of ``controller.ComputeHash``: fnv32a, rendered with ``rand.SafeEncodeString`` (values differ
    from a real cluster's, which hashes the Go struct)."""
    h = 0x811C9DC5
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode() + str(collision_count).encode()
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return "".join(alphabet[ord(ch) % len(alphabet)] for ch in str(h))


def is_active(pod: Obj) -> bool:
    return not meta_deleting(pod) and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def _ready_condition(pod: Obj) -> Obj | None:
    conds = (pod.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c.get("type") == "Ready" and c.get("status") == "True"), None)


def is_ready(pod: Obj) -> bool:
    return _ready_condition(pod) is not None


def deletion_cost(pod: Obj) -> int:
    raw = (pod["metadata"].get("annotations") or {}).get(DELETION_COST)
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0  # an invalid annotation counts as the default, as in GetDeletionCostFromPodAnnotations


def _max_restarts(pod: Obj) -> int:
    return max((s.get("restartCount", 0) for s in (pod.get("status") or {}).get("containerStatuses") or []),
               default=0)


def _log_rank_diff(t1: datetime | None, t2: datetime | None, now: datetime) -> int:
    def rank(t: datetime | None) -> int:
        d = (now - t).total_seconds() * 1e9 if t else 0
        return int(math.log2(d)) if d > 0 else -1
    return rank(t1) - rank(t2)


def _less(a: Obj, b: Obj, rank_a: int, rank_b: int, now: datetime) -> bool:
    """``ActivePodsWithRanks.Less``: True if ``a`` should be deleted before ``b``."""
    node_a, node_b = a["spec"].get("nodeName", ""), b["spec"].get("nodeName", "")
    if node_a != node_b and (not node_a or not node_b):
        return not node_a  # 1. unassigned < assigned
    pa = PHASE_ORDINAL.get((a.get("status") or {}).get("phase", ""), 0)
    pb = PHASE_ORDINAL.get((b.get("status") or {}).get("phase", ""), 0)
    if pa != pb:
        return pa < pb  # 2. Pending < Unknown < Running
    if is_ready(a) != is_ready(b):
        return not is_ready(a)  # 3. not ready < ready
    if deletion_cost(a) != deletion_cost(b):
        return deletion_cost(a) < deletion_cost(b)  # 4. lower pod-deletion-cost first
    if rank_a != rank_b:
        return rank_a > rank_b  # 5. doubled up on a node < not doubled up
    uid_order = a["metadata"]["uid"] < b["metadata"]["uid"]
    if is_ready(a) and is_ready(b):  # 6. ready for less time < more time (log2 buckets, then UID)
        ta = parse_time(_ready_condition(a)["lastTransitionTime"])  # type: ignore[index]
        tb = parse_time(_ready_condition(b)["lastTransitionTime"])  # type: ignore[index]
        if ta != tb:
            diff = _log_rank_diff(ta, tb, now)
            return uid_order if diff == 0 else diff < 0
    if _max_restarts(a) != _max_restarts(b):
        return _max_restarts(a) > _max_restarts(b)  # 7. more restarts first
    ca, cb = a["metadata"]["creationTimestamp"], b["metadata"]["creationTimestamp"]
    if ca != cb:  # 8. newer < older (log2 buckets, then UID); timestamps have whole seconds
        diff = _log_rank_diff(parse_time(ca), parse_time(cb), now)
        return uid_order if diff == 0 else diff < 0
    return False


def pods_to_delete(pods: list[Obj], related: list[Obj], count: int, now: datetime) -> list[Obj]:
    """ReplicaSet ``getPodsToDelete``: rank by co-located related pods, sort, take the first ``count``."""
    on_node = Counter(p["spec"].get("nodeName", "") for p in related if is_active(p))
    ranks = {p["metadata"]["uid"]: on_node[p["spec"].get("nodeName", "")] for p in pods}

    def cmp(a: Obj, b: Obj) -> int:
        ra, rb = ranks[a["metadata"]["uid"]], ranks[b["metadata"]["uid"]]
        return -1 if _less(a, b, ra, rb, now) else 1 if _less(b, a, rb, ra, now) else 0

    return sorted(pods, key=functools.cmp_to_key(cmp))[:count]


class ControllerManager:
    def __init__(self, registry: Registry) -> None:
        self.registry, self.store = registry, registry.store

    def reconcile(self) -> None:
        """One pass over everything; writes only what changed, so repeated passes converge."""
        self.collect_garbage()
        for deployment in list(self.store.scan(DEPLOYMENTS)):
            if not meta_deleting(deployment):
                self.sync_deployment(deployment)

    def collect_garbage(self) -> None:
        """Background deletion: an object whose controller owner is gone is deleted (pods gracefully)."""
        for rt in (REPLICASETS, PODS):
            for obj in list(self.store.scan(rt)):
                owners = [o for o in obj["metadata"].get("ownerReferences") or [] if o.get("controller")]
                if owners and not meta_deleting(obj) and all(
                        self.store.by_uid(o["uid"]) is None for o in owners):
                    self._delete(rt, obj)

    def _delete(self, rt: Any, obj: Obj) -> None:
        try:
            self.registry.delete(rt, obj["metadata"]["namespace"], obj["metadata"]["name"], internal=True)
        except ApiError:
            pass  # gone already

    def sync_deployment(self, d: Obj) -> None:
        ns, meta, spec = d["metadata"]["namespace"], d["metadata"], d["spec"]
        owned_sets = [rs for rs in self.store.scan(REPLICASETS, ns) if _owned_by(rs, d)]
        current = self._current_replica_set(d, owned_sets)
        if current not in owned_sets:
            owned_sets.append(current)
        set_uids = {rs["metadata"]["uid"] for rs in owned_sets}
        all_pods = [p for p in self.store.scan(PODS, ns)
                    if any(o.get("uid") in set_uids for o in p["metadata"].get("ownerReferences") or [])]
        active = [p for p in all_pods if is_active(p)]
        diff = len(active) - spec.get("replicas", 1)
        if diff < 0:
            for _ in range(-diff):
                self._create_pod(current)
        elif diff > 0:
            for victim in pods_to_delete(active, all_pods, diff, self.registry.clock()):
                self._delete(PODS, victim)
        pods = [p for p in self.store.scan(PODS, ns) if is_active(p) and
                any(o.get("uid") in set_uids for o in p["metadata"].get("ownerReferences") or [])]
        for rs in owned_sets:
            mine = [p for p in pods if _owned_by(p, rs)]
            want = copy.deepcopy(rs)
            want["spec"]["replicas"] = len(mine)
            self._write(REPLICASETS, want, spec_too=True)
            self._write(REPLICASETS, self._with_status(self.store.get(REPLICASETS, ns, rs["metadata"]["name"]), mine))
        latest = self.store.get(DEPLOYMENTS, ns, meta["name"])
        status = self._with_status(latest, pods)["status"]
        status["updatedReplicas"] = sum(1 for p in pods if _owned_by(p, current))
        self._write(DEPLOYMENTS, {**latest, "status": _omit_zero(status)})

    def _current_replica_set(self, d: Obj, owned: list[Obj]) -> Obj:
        template = d["spec"]["template"]
        pod_hash = template_hash(template, (d.get("status") or {}).get("collisionCount", 0))
        name = f"{d['metadata']['name']}-{pod_hash}"
        existing = next((rs for rs in owned if rs["metadata"]["name"] == name), None)
        if existing is not None:
            return existing
        labels = {**(template.get("metadata") or {}).get("labels", {}), "pod-template-hash": pod_hash}
        selector = copy.deepcopy(d["spec"]["selector"])
        selector.setdefault("matchLabels", {})["pod-template-hash"] = pod_hash
        rs_template = copy.deepcopy(template)
        rs_template.setdefault("metadata", {})["labels"] = labels
        body = {
            "metadata": {"name": name, "labels": labels, "ownerReferences": [_owner_ref(d, "apps/v1")]},
            "spec": {"replicas": 0, "selector": selector, "template": rs_template},
        }
        return self.registry.create(REPLICASETS, d["metadata"]["namespace"], body, internal=True)

    def _create_pod(self, rs: Obj) -> None:
        template = rs["spec"]["template"]
        body = {
            "metadata": {**copy.deepcopy(template.get("metadata") or {}), "generateName": rs["metadata"]["name"] + "-",
                         "ownerReferences": [_owner_ref(rs, "apps/v1")]},
            "spec": copy.deepcopy(template["spec"]),
        }
        body["metadata"].pop("name", None)
        self.registry.create(PODS, rs["metadata"]["namespace"], body, internal=True)

    @staticmethod
    def _with_status(obj: Obj, pods: list[Obj]) -> Obj:
        selector = obj["spec"].get("selector") or {}
        ready = sum(1 for p in pods if is_ready(p))
        status = {
            "observedGeneration": obj["metadata"].get("generation", 0),
            "replicas": len(pods),
            "fullyLabeledReplicas": sum(1 for p in pods if label_selector_matches(
                selector, p["metadata"].get("labels") or {})),
            "readyReplicas": ready,
            "availableReplicas": ready,
        }
        if obj["kind"] == "Deployment":
            del status["fullyLabeledReplicas"]
            status["unavailableReplicas"] = max(0, obj["spec"].get("replicas", 0) - ready)
        return {**obj, "status": _omit_zero(status)}

    def _write(self, rt: Any, want: Obj, spec_too: bool = False) -> None:
        ns, name = want["metadata"]["namespace"], want["metadata"]["name"]
        have = self.store.find(rt, ns, name)
        if have is None:
            return
        if spec_too and want["spec"] != have["spec"]:
            self.registry.update(rt, ns, name, {**have, "spec": want["spec"]}, internal=True)
        elif not spec_too and want.get("status") != have.get("status"):
            body = {**have, "status": want["status"]}
            self.registry.update(rt, ns, name, body, subresource="status", internal=True)


def _owner_ref(owner: Obj, api_version: str) -> Obj:
    return {"apiVersion": api_version, "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def _owned_by(obj: Obj, owner: Obj) -> bool:
    return any(o.get("uid") == owner["metadata"]["uid"] and o.get("controller")
               for o in obj["metadata"].get("ownerReferences") or [])


def _omit_zero(status: Obj) -> Obj:
    """Go's ``omitempty``: zero counts do not appear in the JSON (``observedGeneration`` included)."""
    return {k: v for k, v in status.items() if v != 0}
