"""What a reload (SIGHUP) may change in a running endpoint: a pure comparison of two configs.

Live: the worker counts and concurrency, scaling, timeouts, auth keys, limits and logging; they take effect
without dropping a connection. Everything else (listen, admin, backend, worker.*, GPUs, placement, ...) needs a
restart, and a reload that changes any of it is refused whole, keeping the running config (as nginx and
HAProxy keep theirs when the new file does not load).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .config import Config

LIVE = ("workers.active", "workers.max", "workers.concurrency", "scaling.", "timeouts.", "auth.", "limits.", "log.")


def _leaves(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted keys and values; an empty mapping has no leaves (so ``worker.env: {}`` -> ``{A: 1}`` is one key)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaves(item, f"{prefix}{key}.")
    else:
        yield prefix.rstrip("."), value


def changes(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """The keys that differ: (those a reload applies live, those that need a restart)."""
    before, after = dict(_leaves(old.model_dump())), dict(_leaves(new.model_dump()))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    # A mapping key set (worker.env.X, gpu.catalog.Y) shows as its leaves; the top-level section decides.
    live = [k for k in changed if k.startswith(LIVE) or k in {p.rstrip(".") for p in LIVE}]
    return live, [k for k in changed if k not in live]
