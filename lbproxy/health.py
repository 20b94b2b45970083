"""Health probing: ``GET /ping`` on each worker's health port decides whether it gets traffic.

200 = ready, 204 = still initializing, anything else or no answer = unhealthy. A starting worker is probed
every few tens of milliseconds while a request waits for it, so that the first queued request goes out
right after the worker turns ready; a ready worker is probed about once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from .policy import WorkerState
from .pool import Worker, WorkerPool
from .readiness import NOT_ASKED, judge
from .sockets import out_of_descriptors

log = logging.getLogger("lbproxy.health")

STARTING_INTERVAL = 0.1  # while nobody waits
HURRY_INTERVAL = 0.02  # while requests wait for a starting worker: bounds cold-start dispatch lag
READY_INTERVAL = 1.0
UNHEALTHY_INTERVAL = 0.5
PROBE_TIMEOUT = 2.0
# Probe connections are kept alive between probes (1 s apart once ready), closed after this idle time: below
# the 5 s keep-alive of common Python servers, so a probe never goes out on a connection the worker is closing.
PROBE_KEEPALIVE = 4.0


class HealthProber:
    """One probe loop per worker, started when the worker appears and ended when it goes."""

    def __init__(self, pool: WorkerPool, path: str) -> None:
        self.pool = pool
        self.path = path
        self._session: aiohttp.ClientSession | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._hurry = asyncio.Event()
        pool.on_queued_without_worker(self._hurry.set)

    async def start(self) -> None:
        # Its own session: probes never wait behind proxied requests for a pooled connection. Connections are
        # reused, so probing needs no new descriptor while lbproxy is short of them (a burst of clients).
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=PROBE_KEEPALIVE),
            timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT),
            skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def watch(self, w: Worker) -> None:
        self._tasks[w.id] = asyncio.create_task(self._loop(w), name=f"probe {w.id}")

    def forget(self, worker_id: str) -> None:
        task = self._tasks.pop(worker_id, None)
        if task is not None:
            task.cancel()

    async def probe(self, w: Worker) -> int | None:
        """The /ping status, None when the worker did not answer, NOT_ASKED when lbproxy could not ask it."""
        assert self._session is not None
        url = f"http://{w.host}:{w.health_port}{self.path}" if ":" not in w.host else (
            f"http://[{w.host}]:{w.health_port}{self.path}"
        )
        try:
            async with self._session.get(url, allow_redirects=False) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # Out of descriptors is lbproxy's own overload (README: the worker is not blamed for it).
            return NOT_ASKED if out_of_descriptors(exc) else None

    async def _loop(self, w: Worker) -> None:
        pool = self.pool
        failures = 0
        try:
            while w.state not in (WorkerState.EXITED, WorkerState.STOPPING, WorkerState.DRAINING):
                if not w.host:  # a pod not scheduled yet: nothing to probe
                    await self._pause(w)
                    continue
                status = await self.probe(w)
                verdict = judge(w.state, status, failures)
                failures = verdict.failures
                if verdict.state is WorkerState.UNHEALTHY:
                    log.warning("worker %s unhealthy: %s", w.id, verdict.reason)
                elif verdict.state is WorkerState.READY and w.state is WorkerState.UNHEALTHY:
                    log.info("worker %s recovered: /ping 200", w.id)
                if verdict.state is not None:
                    pool.set_state(w, verdict.state, verdict.reason)
                elif verdict.reason:
                    w.reason = verdict.reason
                await self._pause(w)
        finally:
            if self._tasks.get(w.id) is asyncio.current_task():
                del self._tasks[w.id]

    async def _pause(self, w: Worker) -> None:
        if w.state is WorkerState.STARTING:
            if self.pool.queued:
                await asyncio.sleep(HURRY_INTERVAL)
                return
            # Sleep, but wake at once when a request starts waiting for a worker.
            self._hurry.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hurry.wait(), STARTING_INTERVAL)
        elif w.state is WorkerState.UNHEALTHY:
            await asyncio.sleep(UNHEALTHY_INTERVAL)
        else:
            await asyncio.sleep(READY_INTERVAL)
