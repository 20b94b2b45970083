"""Which local replica scales a shared queue: the holder of the endpoint's PostgreSQL advisory lock.

The lock lives on the store's own session (``pg_listen.Session``): when a replica dies, or loses its
database, the server ends the session and releases the lock, and another replica takes it within a second.
Every replica records its worker count each second, so the leader counts the followers' workers
(``replicas.role_settings``). Kubernetes replicas use the Lease election instead (``lbproxy.leadership``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..controller import Controller
from ..policy import ScalingSettings, WorkerState
from ..pool import WorkerPool
from .postgres import PostgresJobStore
from .replicas import leader_lock_key, role_settings
from .store import StoreUnavailable

log = logging.getLogger("lbproxy.leader")

BEAT = 1.0
STALE = 5.0  # a replica silent this long is gone: its workers are no longer counted
_PRESENT = (WorkerState.STARTING, WorkerState.READY, WorkerState.UNHEALTHY, WorkerState.DRAINING,
            WorkerState.STOPPING)


class ReplicaRole:
    """Campaigns for the lock each second and gives the controller this replica's settings."""

    def __init__(self, store: PostgresJobStore, controller: Controller, pool: WorkerPool,
                 settings: Callable[[], ScalingSettings], clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.controller = controller
        self.pool = pool
        self.settings = settings  # the config's (a reload may change them)
        self.clock = clock
        self.key = leader_lock_key(store.endpoint)
        self.leading = False
        self.follower_workers = 0

    async def run(self) -> None:
        try:
            while True:
                await self.step()
                await asyncio.sleep(BEAT)
        finally:
            if self.store.session is not None:
                await self.store.session.unlock(self.key)
            await self.store.leave()

    async def step(self) -> None:
        session = self.store.session
        leading = session is not None and await session.try_lock(self.key)
        if leading != self.leading:
            log.info("this replica %s endpoint scaling", "leads" if leading else "no longer leads")
        self.leading = leading
        now = self.clock()
        try:
            await self.store.beat(sum(w.state in _PRESENT for w in self.pool.workers.values()), now)
            if leading:
                self.follower_workers = await self.store.others_workers(now - STALE)
        except StoreUnavailable:
            pass  # the lock went with the session; the next step campaigns again
        except Exception:  # never the end of scaling: the next step tries again
            log.exception("replica heartbeat failed")
        self.controller.settings = role_settings(self.settings(), leading, self.follower_workers)
        self.controller.leading = leading
