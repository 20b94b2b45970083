"""A worker whose ``GET /ping`` turns 200 at a known moment, for the scale-from-zero scenario.

It listens at once and answers 204 ("initialising") for ``COLD_READY_DELAY`` seconds, then 200. It writes
``{"ready_at": T, "first_200_at": T}`` (wall clock, ``time.time()``: the bench reads it on the same machine)
into ``COLD_READY_FILE``: ``ready_at`` is when /ping turned 200, ``first_200_at`` when lbproxy's prober first
got that 200. ``GET /small`` answers 13 bytes, like the nginx reference worker.

Environment: PORT, PORT_HEALTH (the worker contract), COLD_READY_DELAY (default 0.5), COLD_READY_FILE.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

from aiohttp import web


class Readiness:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.ready_at: float | None = None
        self.first_200_at: float | None = None

    def record(self) -> None:
        if self.path is not None:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"ready_at": self.ready_at, "first_200_at": self.first_200_at}))
            tmp.replace(self.path)


async def main() -> int:
    port = int(os.environ["PORT"])
    health_port = int(os.environ.get("PORT_HEALTH") or port)
    delay = float(os.environ.get("COLD_READY_DELAY", "0.5"))
    path = os.environ.get("COLD_READY_FILE")
    state = Readiness(Path(path) if path else None)

    async def ping(request: web.Request) -> web.Response:
        if state.ready_at is None:
            return web.Response(status=204)
        if state.first_200_at is None:
            state.first_200_at = time.time()
            state.record()
        return web.Response(status=200)

    async def small(request: web.Request) -> web.Response:
        return web.Response(text="hello, world\n")

    apps = [web.Application()]
    if health_port != port:
        apps.append(web.Application())
    apps[-1].router.add_get("/ping", ping)
    apps[0].router.add_get("/small", small)
    runners = [web.AppRunner(app, handle_signals=False, access_log=None) for app in apps]
    for runner, site_port in zip(runners, [port, health_port], strict=False):
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", site_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.sleep(delay)
    state.ready_at = time.time()
    state.record()
    await stop.wait()
    for runner in runners:
        await runner.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
