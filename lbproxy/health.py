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

log = logging.getLogger("lbproxy.health")

STARTING_INTERVAL = 0.1  # while nobody waits
HURRY_INTERVAL = 0.02  # while requests wait for a starting worker: bounds cold-start dispatch lag
READY_INTERVAL = 1.0
UNHEALTHY_INTERVAL = 0.5
PROBE_TIMEOUT = 2.0
FAILURES_TO_UNHEALTHY = 2  # one lost probe under load is not enough to pull a worker out of rotation


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
        # Its own session: probes never wait behind proxied requests for a pooled connection.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
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
        """The /ping status, or None when the worker did not answer."""
        assert self._session is not None
        url = f"http://{w.host}:{w.health_port}{self.path}" if ":" not in w.host else (
            f"http://[{w.host}]:{w.health_port}{self.path}"
        )
        try:
            async with self._session.get(url, allow_redirects=False) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def _loop(self, w: Worker) -> None:
        pool = self.pool
        failures = 0
        try:
            while w.state not in (WorkerState.EXITED, WorkerState.STOPPING, WorkerState.DRAINING):
                if not w.host:  # a pod not scheduled yet: nothing to probe
                    await self._pause(w)
                    continue
                status = await self.probe(w)
                state = w.state
                if state is WorkerState.STARTING:
                    if status == 200:
                        pool.set_state(w, WorkerState.READY, "/ping 200")
                    elif status is not None:
                        w.reason = f"/ping {status}" + (" (initializing)" if status == 204 else "")
                elif status == 200:
                    failures = 0
                    if state is WorkerState.UNHEALTHY:
                        log.info("worker %s recovered: /ping 200", w.id)
                        pool.set_state(w, WorkerState.READY, "/ping 200 again")
                elif state is WorkerState.READY:
                    failures += 1
                    if failures >= FAILURES_TO_UNHEALTHY:
                        why = f"/ping answered {status}" if status is not None else "/ping did not answer"
                        log.warning("worker %s unhealthy: %s", w.id, why)
                        pool.set_state(w, WorkerState.UNHEALTHY, why)
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
