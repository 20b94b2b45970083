"""The three patch types the API server accepts: JSON merge (RFC 7386), JSON (RFC 6902) and strategic merge.

Pure functions over JSON-like values. The strategic merge follows apimachinery's ``strategicpatch.mergeMap`` and
``mergeSlice`` step by step (directives, list order), with patch metadata (``patchStrategy``/``patchMergeKey``
struct tags) copied from k8s.io/api for the types the emulator serves. A field not listed behaves as a field
without tags: maps merge recursively, lists are replaced.
"""

from __future__ import annotations

import copy
from typing import Any


class PatchError(ValueError):
    """The patch is malformed or does not apply; ``code`` is the HTTP status the API server answers with."""

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(message)
        self.code = code


# --- RFC 7386 -----------------------------------------------------------------------------------------------

def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


# --- RFC 6902 -----------------------------------------------------------------------------------------------

def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}", 400)
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise PatchError(f"doc is missing path: {path!r}")
    return cur


def _index(container: list[Any], part: str, path: str, adding: bool) -> int:
    if part == "-" and adding:
        return len(container)
    if not part.isdigit():
        raise PatchError(f"invalid array index {part!r} in {path!r}")
    i = int(part)
    if i > len(container) or (i == len(container) and not adding):
        raise PatchError(f"array index out of bounds in {path!r}")
    return i


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    if isinstance(parent, dict) and parts[-1] in parent:
        return parent[parts[-1]]
    if isinstance(parent, list):
        return parent[_index(parent, parts[-1], path, adding=False)]
    raise PatchError(f"doc is missing path: {path!r}")


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    if isinstance(parent, dict):
        parent[parts[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, parts[-1], path, adding=True), value)
    else:
        raise PatchError(f"doc is missing path: {path!r}")
    return doc


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    parent = _parent(doc, parts, path)
    if isinstance(parent, dict) and parts and parts[-1] in parent:
        del parent[parts[-1]]
    elif isinstance(parent, list) and parts:
        del parent[_index(parent, parts[-1], path, adding=False)]
    else:
        raise PatchError(f"unable to remove nonexistent key: {path!r}")
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a list of operations", 400)
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid JSON patch operation {op!r}", 400)
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"operation {kind} needs a value", 400)
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc = _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)  # must exist
            doc = _add(_remove(doc, path), path, copy.deepcopy(op["value"])) if path else copy.deepcopy(op["value"])
        elif kind == "move":
            value = _get(doc, op["from"])
            doc = _add(_remove(doc, op["from"]), path, value)
        elif kind == "copy":
            doc = _add(doc, path, copy.deepcopy(_get(doc, op["from"])))
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"testing value {path} failed: test operation does not apply")
        else:
            raise PatchError(f"unexpected operation {kind!r}", 400)
    return doc


# --- strategic merge ----------------------------------------------------------------------------------------

# A field: (patch strategy, merge key, type of the value or of the list's elements). Strategy "" = none.
Field = tuple[str, str, str]
SCHEMA: dict[str, dict[str, Field]] = {
    "ObjectMeta": {
        "finalizers": ("merge", "", ""),
        "ownerReferences": ("merge", "uid", ""),
    },
    "Pod": {"metadata": ("", "", "ObjectMeta"), "spec": ("", "", "PodSpec"), "status": ("", "", "PodStatus")},
    "PodTemplateSpec": {"metadata": ("", "", "ObjectMeta"), "spec": ("", "", "PodSpec")},
    "PodSpec": {
        "containers": ("merge", "name", "Container"),
        "initContainers": ("merge", "name", "Container"),
        "ephemeralContainers": ("merge", "name", "Container"),
        "volumes": ("merge,retainKeys", "name", ""),
        "imagePullSecrets": ("merge", "name", ""),
        "hostAliases": ("merge", "ip", ""),
        "topologySpreadConstraints": ("merge", "topologyKey", ""),
        "resourceClaims": ("merge,retainKeys", "name", ""),
        "schedulingGates": ("merge", "name", ""),
    },
    "Container": {
        "ports": ("merge", "containerPort", ""),
        "env": ("merge", "name", ""),
        "volumeMounts": ("merge", "mountPath", ""),
        "volumeDevices": ("merge", "devicePath", ""),
    },
    "PodStatus": {
        "conditions": ("merge", "type", ""),
        "podIPs": ("merge", "ip", ""),
        "hostIPs": ("merge", "ip", ""),
        "resourceClaimStatuses": ("merge", "name", ""),
    },
    "Deployment": {
        "metadata": ("", "", "ObjectMeta"), "spec": ("", "", "DeploymentSpec"), "status": ("", "", "Conditions"),
    },
    "ReplicaSet": {
        "metadata": ("", "", "ObjectMeta"), "spec": ("", "", "DeploymentSpec"), "status": ("", "", "Conditions"),
    },
    "DeploymentSpec": {"template": ("", "", "PodTemplateSpec"), "strategy": ("", "", "DeploymentStrategy")},
    "DeploymentStrategy": {"rollingUpdate": ("retainKeys", "", "")},
    "Conditions": {"conditions": ("merge", "type", "")},
    "Service": {"metadata": ("", "", "ObjectMeta"), "spec": ("", "", "ServiceSpec"), "status": ("", "", "Conditions")},
    "ServiceSpec": {"ports": ("merge", "port", "")},
    "Node": {"metadata": ("", "", "ObjectMeta"), "spec": ("", "", "NodeSpec"), "status": ("", "", "NodeStatus")},
    "NodeSpec": {"podCIDRs": ("merge", "", "")},
    "NodeStatus": {"conditions": ("merge", "type", ""), "addresses": ("merge", "type", "")},
    "PersistentVolumeClaim": {"metadata": ("", "", "ObjectMeta"), "status": ("", "", "Conditions")},
}
GENERIC = {"metadata": ("", "", "ObjectMeta")}

DIRECTIVE = "$patch"
RETAIN_KEYS = "$retainKeys"
DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"
SET_ORDER = "$setElementOrder/"


def _field(type_name: str, key: str) -> Field:
    return SCHEMA.get(type_name, GENERIC if type_name else {}).get(key, ("", "", ""))


def strategic_merge_patch(original: dict[str, Any], patch: dict[str, Any], kind: str) -> dict[str, Any]:
    """Apply ``patch`` to ``original`` (a ``kind`` object) as the API server does; the inputs are not changed."""
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object", 400)
    return _merge_map(copy.deepcopy(original), copy.deepcopy(patch), kind)


def _merge_map(original: dict[str, Any], patch: dict[str, Any], t: str) -> dict[str, Any]:
    if DIRECTIVE in patch:
        directive = patch.pop(DIRECTIVE)
        if directive == "replace":
            return patch
        if directive == "delete":
            return {}
        raise PatchError(f"Unknown patch type: {directive} in map: {patch}", 400)
    _retain_keys(original, patch)
    _set_element_order(original, patch, t)
    for key, value in patch.items():
        is_delete_list = False
        if key.startswith(DELETE_PRIMITIVE):
            key, is_delete_list = key[len(DELETE_PRIMITIVE):], True
        if value is None:
            original.pop(key, None)
            continue
        if key not in original or type(original[key]) is not type(value):
            # A value with nothing to merge into is taken as it is, minus nulls and directives.
            if not is_delete_list:
                keep, cleaned = _remove_directives(_discard_nulls(value))
                if keep:
                    original[key] = cleaned
                else:
                    original.pop(key, None)
            continue
        strategy, merge_key, sub = _field(t, key)
        strategies = strategy.split(",")
        if isinstance(value, dict):
            original[key] = value if "replace" in strategies else _merge_map(original[key], value, sub)
        elif isinstance(value, list):
            if "merge" in strategies or is_delete_list:
                original[key] = _merge_slice(original[key], value, merge_key, sub, is_delete_list)
            else:
                original[key] = value
        else:
            original[key] = value
    return original


def _discard_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _discard_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_discard_nulls(v) for v in value]
    return value


def _remove_directives(value: Any) -> tuple[bool, Any]:
    """apimachinery's removeDirectives: a map holding ``$patch`` is dropped, recursively."""
    if isinstance(value, dict):
        if DIRECTIVE in value:
            return False, None
        out = {}
        for k, v in value.items():
            keep, cleaned = _remove_directives(v)
            if keep:
                out[k] = cleaned
        return True, out
    if isinstance(value, list):
        items = [_remove_directives(v) for v in value]
        return True, [cleaned for keep, cleaned in items if keep]
    return True, value


def _retain_keys(original: dict[str, Any], patch: dict[str, Any]) -> None:
    if RETAIN_KEYS not in patch:
        return
    keep = patch.pop(RETAIN_KEYS)
    if not isinstance(keep, list):
        raise PatchError("invalid patch: the $retainKeys directive must be a list", 400)
    for k, v in patch.items():
        if v is not None and not k.startswith((DELETE_PRIMITIVE, SET_ORDER)) and k not in keep:
            raise PatchError("doesn't match the $retainKeys directive", 400)
    for k in list(original):
        if k not in keep:
            del original[k]


def _set_element_order(original: dict[str, Any], patch: dict[str, Any], t: str) -> None:
    for key in [k for k in patch if k.startswith(SET_ORDER)]:
        order = patch.pop(key)
        if not isinstance(order, list):
            raise PatchError("invalid patch: the $setElementOrder directive must be a list", 400)
        name = key[len(SET_ORDER):]
        orig_list, patch_list = original.get(name), patch.get(name)
        if orig_list is None and patch_list is None:
            continue
        strategy, merge_key, sub = _field(t, name)
        _check_order(patch_list or [], order, merge_key)
        if orig_list is not None and patch_list is None:
            merged = orig_list
        elif orig_list is None:
            merged = _remove_directives(patch_list)[1]
        elif "merge" in strategy.split(",") and isinstance(orig_list, list) and isinstance(patch_list, list):
            merged = _merge_slice(orig_list, patch_list, merge_key, sub, False)
        else:
            merged = patch_list
        in_order = [v for v in merged if _position(order, v, merge_key) >= 0]
        server_only = [v for v in merged if _position(order, v, merge_key) < 0]
        original[name] = _normalize_order(in_order, server_only, order, orig_list or [], merge_key)
        patch.pop(name, None)


def _check_order(patch_list: list[Any], order: list[Any], merge_key: str) -> None:
    """validatePatchWithSetOrderList: the patch list's items appear in ``order``, in the same relative order."""
    items = [v for v in patch_list if not (isinstance(v, dict) and DIRECTIVE in v)]
    i = j = 0
    while i < len(items) and j < len(order):
        same = (items[i].get(merge_key) == order[j].get(merge_key)) if merge_key else items[i] == order[j]
        i, j = (i + 1 if same else i), j + 1
    if i < len(items):
        raise PatchError(f"The order in patch list: {patch_list} doesn't match $setElementOrder list: {order}", 400)


def _merge_slice(original: list[Any], patch: list[Any], merge_key: str, t: str, is_delete_list: bool) -> list[Any]:
    if not original and not patch:
        return original
    scalars = not any(isinstance(v, dict) for v in original + patch)
    if scalars:
        if is_delete_list:
            return [v for v in original if v not in patch]
        merged: list[Any] = []
        for v in original + patch:
            if v not in merged:
                merged.append(v)
    else:
        if not merge_key:
            raise PatchError("cannot merge lists without merge key", 400)
        original, patch = _special_elements(original, patch, merge_key)
        merged = list(original)
        for item in patch:
            if merge_key not in item:
                raise PatchError(f"map: {item} does not contain declared merge key: {merge_key}", 400)
            i = _position(merged, item, merge_key)
            if i >= 0:
                merged[i] = _merge_map(merged[i], item, t)
            else:
                merged.append(item)
    in_patch = [v for v in merged if _position(patch, v, merge_key) >= 0]
    server_only = [v for v in merged if _position(patch, v, merge_key) < 0]
    return _normalize_order(in_patch, server_only, patch, original, merge_key)


def _special_elements(original: list[Any], patch: list[Any], merge_key: str) -> tuple[list[Any], list[Any]]:
    plain: list[Any] = []
    replace = False
    for item in patch:
        if not isinstance(item, dict) or DIRECTIVE not in item:
            plain.append(item)
            continue
        directive = item[DIRECTIVE]
        if directive == "delete":
            if merge_key not in item:
                raise PatchError(f"map: {item} does not contain declared merge key: {merge_key}", 400)
            original = [v for v in original if not (isinstance(v, dict) and v.get(merge_key) == item[merge_key])]
        elif directive == "replace":
            replace = True
        elif directive == "merge":
            raise PatchError("merging lists cannot yet be specified in the patch", 400)
        else:
            raise PatchError(f"Unknown patch type: {directive} in map: {item}", 400)
    return (plain, []) if replace else (original, plain)


def _position(items: list[Any], value: Any, merge_key: str) -> int:
    """Index of ``value`` in ``items``: by merge key for maps, by equality for scalars; -1 if absent."""
    for i, item in enumerate(items):
        if merge_key:
            if isinstance(item, dict) and isinstance(value, dict) and item.get(merge_key) == value.get(merge_key):
                return i
        elif item == value:
            return i
    return -1


def _normalize_order(in_patch: list[Any], server_only: list[Any], patch_order: list[Any], server_order: list[Any],
                     merge_key: str) -> list[Any]:
    """apimachinery's normalizeElementOrder: patch items in patch order, server-only items in live order, then
    interleaved by their positions in the live list."""
    def sort_by(items: list[Any], order: list[Any]) -> list[Any]:
        deletes = [v for v in items if isinstance(v, dict) and v.get(DIRECTIVE) == "delete"]
        rest = [v for v in items if not (isinstance(v, dict) and v.get(DIRECTIVE) == "delete")]
        rest.sort(key=lambda v: _position(order, v, merge_key))
        return rest + deletes

    left, right = sort_by(server_only, server_order), sort_by(in_patch, patch_order)
    out: list[Any] = []
    i = j = 0
    while i < len(left) or j < len(right):
        if j >= len(right):
            out.append(left[i])
            i += 1
        elif i >= len(left):
            out.append(right[j])
            j += 1
        else:
            li, ri = _position(server_order, left[i], merge_key), _position(server_order, right[j], merge_key)
            if li >= 0 and ri >= 0 and li < ri:
                out.append(left[i])
                i += 1
            else:
                out.append(right[j])
                j += 1
    return out
