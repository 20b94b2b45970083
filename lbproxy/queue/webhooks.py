"""Webhooks: a job's final status POSTed to the URL its submission named, retried as Runpod does.

In memory: a webhook still pending when lbproxy stops is not sent after a restart (the job's result
itself is durable and stays readable through /status for queue.retention).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp

log = logging.getLogger("lbproxy.queue.webhooks")

TIMEOUT = 10.0
MAX_PENDING = 10_000  # bounds memory when a webhook receiver is down for long under load


class Webhooks:
    def __init__(self, retries: int, delay: float) -> None:
        self.retries = retries
        self.delay = delay
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.dropped = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def send(self, url: str, body: dict[str, Any]) -> None:
        if len(self._tasks) >= MAX_PENDING:
            self.dropped += 1
            log.warning("webhook for job %s not sent: %d webhooks already pending", body.get("id"), MAX_PENDING)
            return
        task = asyncio.create_task(self._deliver(url, json.dumps(body).encode()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, data: bytes) -> None:
        assert self._session is not None
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.delay)
            try:
                async with self._session.post(url, data=data, headers={"Content-Type": "application/json"},
                                              allow_redirects=False) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        return
                    why = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                why = str(exc) or type(exc).__name__
            log.warning("webhook %s attempt %d of %d failed: %s", url, attempt + 1, self.retries + 1, why)
