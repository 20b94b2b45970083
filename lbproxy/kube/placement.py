"""Where workers may and should run: node affinity from the GPU and placement settings. Pure.

- Required (hard): the pool's GPU products (``gpu.categories`` narrowed by ``gpu.types``), the zones in
  ``placement.data_centers``, and a CUDA driver that supports at least one of ``gpu.cuda_versions``.
- Preferred (soft): nodes holding ``placement.model`` and, with ``flashboot``, nodes that ran this endpoint's
  workers recently (the controller labels them), so a restart finds the image and model already there.
- Which flashboot labels have grown too old to mean "recently" (``expired_flashboot_nodes``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping
from typing import Any

from ..config import Config

MODEL_WEIGHT = 50
FLASHBOOT_WEIGHT = 20
_LABEL_NAME_MAX = 63
_INVALID = re.compile(r"[^A-Za-z0-9_.-]+")
_UNIX_TIME = re.compile(r"[0-9]{1,12}")


def label_name(text: str) -> str:
    """A label name part (after the prefix) for ``text``: valid characters, alphanumeric ends, <= 63 chars.

    ``meta-llama/Llama-3.1-8B`` becomes ``meta-llama.Llama-3.1-8B``; over-long names keep a hash suffix so two
    long names never collide.
    """
    name = _INVALID.sub("-", text.replace("/", ".")).strip("-_.")
    if len(name) > _LABEL_NAME_MAX:
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        name = name[: _LABEL_NAME_MAX - 9].rstrip("-_.") + "-" + digest
    return name or hashlib.sha256(text.encode()).hexdigest()[:16]


def model_label(config: Config) -> str | None:
    model = config.placement.model
    return None if model is None else config.backend.node_labels.model_prefix + label_name(model)


def flashboot_label(config: Config) -> str:
    return config.backend.node_labels.flashboot_prefix + label_name(config.name)


def expired_flashboot_nodes(values: Mapping[str, str], now: float, busy: Collection[str],
                            retention: float) -> list[str]:
    """The nodes whose flashboot label should go, sorted: ``values`` maps node -> label value (the Unix time
    of the last labelling), ``busy`` holds the nodes where a worker of the endpoint is now.

    A value older than ``retention`` seconds goes, and so does one that is not a Unix time in whole seconds or
    lies more than ``retention`` ahead (a wrong clock): "preferred" would otherwise last forever. Busy nodes keep
    theirs whatever its value: the worker there is the proof, and the label is refreshed.
    """
    out = []
    for node, value in values.items():
        if node in busy:
            continue
        if _UNIX_TIME.fullmatch(value) is None or abs(now - int(value)) > retention:
            out.append(node)
    return sorted(out)


def _min_cuda(versions: tuple[str, ...]) -> tuple[int, int | None] | None:
    """The least demanding version: a driver that supports it satisfies "one of these"."""
    parsed: list[tuple[int, int | None]] = []
    for v in versions:
        major, _, minor = v.partition(".")
        parsed.append((int(major), int(minor) if minor else None))
    if not parsed:
        return None
    return min(parsed, key=lambda mv: (mv[0], mv[1] or 0))


def products(config: Config, category: str | None) -> tuple[str, ...]:
    """GPU product label values a worker of this pool may run on (empty: any GPU)."""
    gpu = config.gpu
    if category is not None:
        return gpu.products(category)
    if gpu.types:  # no categories: the types across the whole catalog
        seen: dict[str, None] = {}
        for cid in gpu.effective_catalog():
            for p in gpu.products(cid):
                seen[p] = None
        return tuple(seen)
    return ()


def node_affinity(config: Config, category: str | None) -> dict[str, Any] | None:
    """The pod's ``affinity.nodeAffinity`` for one worker pool, or None when nothing constrains it."""
    labels = config.backend.node_labels
    common: list[dict[str, Any]] = []
    prods = products(config, category)
    if prods:
        common.append({"key": labels.gpu_product, "operator": "In", "values": list(prods)})
    if config.placement.data_centers:
        common.append({"key": labels.zone, "operator": "In", "values": list(config.placement.data_centers)})
    terms: list[list[dict[str, Any]]] = [common]
    cuda = _min_cuda(config.gpu.cuda_versions)
    if cuda is not None:
        major, minor = cuda
        # "Supports X.Y" = driver major > X, or major == X and minor >= Y. Terms are ORed, expressions ANDed.
        newer = [*common, {"key": labels.cuda_driver_major, "operator": "Gt", "values": [str(major)]}]
        same = [*common, {"key": labels.cuda_driver_major, "operator": "In", "values": [str(major)]}]
        if minor:
            same.append({"key": labels.cuda_driver_minor, "operator": "Gt", "values": [str(minor - 1)]})
        terms = [newer, same]
    out: dict[str, Any] = {}
    if any(terms):
        out["requiredDuringSchedulingIgnoredDuringExecution"] = {
            "nodeSelectorTerms": [{"matchExpressions": t} for t in terms]
        }
    preferred = []
    model = model_label(config)
    if model is not None:
        preferred.append({"weight": MODEL_WEIGHT,
                          "preference": {"matchExpressions": [{"key": model, "operator": "Exists"}]}})
    if config.flashboot:
        preferred.append({"weight": FLASHBOOT_WEIGHT, "preference": {
            "matchExpressions": [{"key": flashboot_label(config), "operator": "Exists"}]}})
    if preferred:
        out["preferredDuringSchedulingIgnoredDuringExecution"] = preferred
    return out or None
