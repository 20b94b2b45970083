"""GPU category fallback at work: which pool a new worker goes to, and moving stuck workers on.

The decisions are ``fallback.py``'s (pure); this module feeds them the pods and carries them out: it blocks a
pool whose pods stay unschedulable and scales the stuck ones over to the next category.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from ..backends.base import StartFailed
from ..config import Config
from . import manifests
from .fallback import PoolState, choose_pool, moves
from .pod_watch import Pod
from .scaling import PoolScaler

log = logging.getLogger("lbproxy.backend.kubernetes")

FALLBACK_CHECK = 1.0


def pool_states(pools: Sequence[manifests.Pool], pods: Mapping[str, Pod]) -> list[PoolState]:
    """Each pool with the times its live pods became unschedulable: what ``fallback.py`` decides from."""
    stuck: dict[str, list[float]] = {}
    for pod in pods.values():
        if pod.unschedulable_since is not None and not pod.terminating:
            stuck.setdefault(pod.pool, []).append(pod.unschedulable_since)
    return [PoolState(p.name, p.rank, tuple(stuck.get(p.label, ()))) for p in pools]


class FallbackLoop:
    """Holds each pool's fallback block (``blocked_until``, clock time) and moves stuck workers once a second."""

    def __init__(
        self,
        config: Config,
        pools: Sequence[manifests.Pool],
        pods: Mapping[str, Pod],
        scaler: PoolScaler,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.after = config.backend.fallback_after
        self.retry = config.backend.fallback_retry
        self.pools = pools
        self.pods = pods  # the pod watch's, read only
        self.scaler = scaler
        self.clock = clock
        self.sleep = sleep
        self.blocked_until: dict[str, float] = {}

    def pool_for_new_worker(self) -> str:
        return choose_pool(pool_states(self.pools, self.pods), self.blocked_until, self.clock())

    async def run(self) -> None:
        warned: set[str] = set()
        while True:
            await self.sleep(FALLBACK_CHECK)
            now = self.clock()
            for move in moves(pool_states(self.pools, self.pods), self.blocked_until, now, self.after):
                if move.target is None:
                    if move.source not in warned:
                        warned.add(move.source)
                        log.warning("%d worker(s) of %s unschedulable for %gs and no later gpu.categories "
                                    "entry to fall back to", move.count, move.source, self.after)
                    continue
                warned.discard(move.source)
                self.blocked_until[move.source] = now + self.retry
                log.warning("GPU fallback: %d worker(s) of %s unschedulable for %gs; starting them in %s "
                            "(%s is tried again in %gs)", move.count, move.source, self.after, move.target,
                            move.source, self.retry)
                replicas = self.scaler.replicas
                try:
                    # The ReplicaSet removes unscheduled pods first, so the stuck ones are the ones that go.
                    await self.scaler.scale(move.source, max(0, replicas[move.source] - move.count))
                    await self.scaler.scale(move.target, replicas[move.target] + move.count)
                except StartFailed as exc:
                    log.error("GPU fallback failed: %s", exc)
