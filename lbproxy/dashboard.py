"""The admin port's live dashboard: the page and its assets, the chart JSON under /api/, and the sampler.

The page (lbproxy/static/) draws with uPlot, vendored with its licence (no CDN: it works in a cluster with
no way out), and polls ``/api/charts?since=T`` and ``/status`` every two seconds. The sampler reads the
metrics, the pool and the cost meter every ``history.STEP`` seconds into fixed-size rings (lbproxy.history)
and writes the cost state file when it is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from importlib import resources

from aiohttp import web
from prometheus_client import Histogram
from prometheus_client.registry import Collector

from .cost import CostMeter
from .history import CHARTS, STEP, History, Reading, Sampler
from .pool import WorkerPool

log = logging.getLogger("lbproxy.dashboard")

_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".txt": "text/plain"}
ASSETS = ("index.html", "dashboard.js", "dashboard.css", "uPlot.iife.min.js", "uPlot.min.css", "uPlot.LICENSE.txt")
# Only this origin's own scripts, styles and data: a page on the admin port cannot be made to load anything else.
_CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _asset(name: str) -> bytes:
    return resources.files("lbproxy").joinpath("static", name).read_bytes()


class Dashboard:
    """History of the last hour plus the routes that serve it."""

    def __init__(
        self,
        pool: WorkerPool,
        requests: Collector,
        queue_wait: Histogram,
        meter: CostMeter,
        workers_by_state: Callable[[], tuple[int, int, dict[str, int]]],
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.requests = requests
        self.queue_wait = queue_wait
        self.meter = meter
        self.workers_by_state = workers_by_state
        self.wall = wall
        self.history = History()
        self.sampler = Sampler(self.history)
        self._assets = {name: _asset(name) for name in ASSETS}

    # -- sampling --------------------------------------------------------------------------------

    def read(self) -> Reading:
        requests: dict[str, float] = {}
        for family in self.requests.collect():
            for s in family.samples:
                if s.name.endswith("_total"):
                    requests[s.labels["code"]] = requests.get(s.labels["code"], 0.0) + s.value
        buckets: list[tuple[float, float]] = []
        for family in self.queue_wait.collect():
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    buckets.append((float(s.labels["le"]), s.value))
        buckets.sort()
        queued, in_flight, by_state = self.workers_by_state()
        totals = self.meter.totals()
        priced = totals.priced
        spent = {phase.value: (dollars if priced else seconds)
                 for phase, (seconds, dollars) in totals.by_phase().items()}
        return Reading(requests, buckets, queued, in_flight, by_state, totals.cold_starts,
                       self.meter.rate_per_hour(), spent)

    def tick(self) -> None:
        self.meter.refresh()
        self.sampler.sample(self.wall(), self.read())

    async def run(self) -> None:
        """Sample every STEP seconds and keep the cost state file current, until cancelled."""
        while True:
            started = time.monotonic()
            self.tick()
            doc = self.meter.save_due()
            if doc is not None:
                await asyncio.to_thread(self.meter.write, doc)
            await asyncio.sleep(max(0.0, STEP - (time.monotonic() - started)))

    async def close(self) -> None:
        """The last sample's cost, written at shutdown (after every worker stopped)."""
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.meter.save)

    # -- routes ----------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.page)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/api/charts", self.charts)
        app.router.add_get("/api/charts/{name}", self.chart)

    async def page(self, request: web.Request) -> web.Response:
        return self._serve("index.html")

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._assets or name == "index.html":
            raise web.HTTPNotFound(text="no such file")
        return self._serve(name)

    def _serve(self, name: str) -> web.Response:
        ext = name[name.rfind("."):]
        resp = web.Response(body=self._assets[name], content_type=_TYPES.get(ext, "application/octet-stream"),
                            charset="utf-8")
        resp.headers["Content-Security-Policy"] = _CSP
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Cache-Control"] = "no-cache"
        return resp

    def _since(self, request: web.Request) -> float | None:
        raw = request.query.get("since")
        if raw is None:
            return None
        try:
            value = float(raw)
        except ValueError:
            raise web.HTTPBadRequest(text="since: a unix time in seconds") from None
        if not math.isfinite(value):
            raise web.HTTPBadRequest(text="since: a unix time in seconds")
        return value

    async def charts(self, request: web.Request) -> web.Response:
        """Every chart's series, newer than ``?since=`` (unix seconds) when given."""
        return web.json_response({"step": STEP, "window": self.history.size * STEP, "charts": CHARTS,
                                  "data": self.history.since(self._since(request))})

    async def chart(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in CHARTS:
            raise web.HTTPNotFound(text=f"no chart {name!r} (charts: {', '.join(CHARTS)})")
        return web.json_response({"step": STEP, "series": CHARTS[name],
                                  "data": self.history.since(self._since(request), CHARTS[name])})
