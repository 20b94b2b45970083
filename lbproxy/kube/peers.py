"""The leader's view of the other proxy replicas' load: it polls their admin port's ``/internal/load``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import aiohttp

from ..policy import PeerLoad
from .client import KubeClient

log = logging.getLogger("lbproxy.peers")

POLL = 0.5
STALE = 3.0  # a replica that has not answered this long is left out (it may be gone)


class PeerLoads:
    """Polls every proxy pod (``backend.proxy_selector``) except this one, while this replica leads."""

    def __init__(self, client: KubeClient, selector: str, admin_port: int, own_ip: str | None) -> None:
        self.client = client
        self.selector = selector
        self.admin_port = admin_port
        self.own_ip = own_ip
        self._latest: dict[str, tuple[float, PeerLoad]] = {}

    def loads(self) -> tuple[PeerLoad, ...]:
        now = time.monotonic()
        return tuple(load for at, load in self._latest.values() if now - at < STALE)

    def in_flight(self, worker_id: str) -> int:
        return sum(n for load in self.loads() for wid, n, _ in load.workers if wid == worker_id)

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session:
            while True:
                try:
                    pods, _ = await self.client.list_pods(self.selector, self.client.own_namespace)
                except Exception as exc:  # the API may be down: keep the last answers until they go stale
                    log.debug("listing proxy replicas failed: %s", exc)
                    pods = []
                ips = [ip for p in pods if (ip := (p.get("status") or {}).get("podIP")) and ip != self.own_ip]
                await asyncio.gather(*(self._poll(session, ip) for ip in ips))
                for ip in set(self._latest) - set(ips):
                    if time.monotonic() - self._latest[ip][0] >= STALE:
                        del self._latest[ip]
                await asyncio.sleep(POLL)

    async def _poll(self, session: aiohttp.ClientSession, ip: str) -> None:
        host = f"[{ip}]" if ":" in ip else ip
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            async with session.get(f"http://{host}:{self.admin_port}/internal/load") as resp:
                data: dict[str, Any] = await resp.json()
            self._latest[ip] = (time.monotonic(), PeerLoad(
                int(data["queued"]), float(data["oldest_wait_seconds"]),
                tuple((wid, int(w["in_flight"]), float(w["idle_seconds"])) for wid, w in data["workers"].items()),
            ))
