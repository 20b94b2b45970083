"""The admin port: liveness, readiness, JSON status, Prometheus metrics and the live dashboard.

It binds to loopback by default (``admin: 127.0.0.1:9090``) and never shows API keys or worker env values.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import __version__
from .config import Config
from .controller import Controller
from .policy import WorkerState
from .pool import WorkerPool

if TYPE_CHECKING:
    from .cost import CostMeter
    from .dashboard import Dashboard


class Admin:
    def __init__(
        self,
        config: Config,
        pool: WorkerPool,
        controller: Controller,
        metrics_render: Callable[[], bytes],
        describe: Callable[[str], dict[str, object]],
        notices: Callable[[], list[str]],
        backend_status: Callable[[], dict[str, object]] | None = None,
        cost: CostMeter | None = None,
        dashboard: Dashboard | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.controller = controller
        self.metrics_render = metrics_render
        self.describe = describe
        self.notices = notices
        self.backend_status = backend_status
        self.cost = cost
        self.dashboard = dashboard
        self.stopping = False
        self.started = time.time()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/status", self.status_json)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/internal/load", self.load)
        if self.dashboard is not None:
            self.dashboard.add_routes(app)
        return app

    def queued_here(self) -> tuple[int, float | None]:
        """Requests waiting in this replica's pool, and since when the oldest waits (the leader adds them up)."""
        return self.pool.queued, self.pool.oldest_queued_at()

    async def load(self, request: web.Request) -> web.Response:
        """This replica's queue and per-worker in-flight counts, summed by the leading replica."""
        now = self.pool.clock()
        queued, oldest = self.queued_here()
        return web.json_response({
            "queued": queued,
            "oldest_wait_seconds": now - oldest if oldest is not None else 0.0,
            # A worker this replica never had work for (not ready here: a queue endpoint's pod talks to another
            # replica) says nothing of its idleness; reported as idle 0 s it would never be scaled down.
            "workers": {w.id: {"in_flight": w.in_flight, "idle_seconds": w.idle_for(now)}
                        for w in self.pool.workers.values() if w.in_flight or w.idle_since is not None},
        })

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    def is_ready(self, require_worker: bool = False) -> bool:
        """Ready to take traffic: not stopping. Without a ready worker requests queue (cold start) and, past
        timeouts.wait, get a JSON 503 with Retry-After: better than the connection refusals a load balancer
        (a Service without endpoints) gives when it drops the proxy. ``require_worker``: only with a ready
        worker, for load balancers in front of proxies that each run their own (local) workers."""
        if self.stopping:
            return False
        return bool(self.pool.ready) or not require_worker

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self.is_ready(request.query.get("require_worker", "") in ("1", "true", "yes"))
        return web.json_response(
            {"ready": ready, "ready_workers": len(self.pool.ready), "stopping": self.stopping},
            status=200 if ready else 503,
        )

    def status(self) -> dict[str, Any]:
        now = self.pool.clock()
        c = self.controller
        oldest = self.pool.oldest_queued_at()
        return {
            "endpoint": self.config.name,
            "version": __version__,
            "backend": {"type": self.config.backend.type,
                        **(self.backend_status() if self.backend_status is not None else {})},
            "uptime_seconds": round(time.time() - self.started, 1),
            "stopping": self.stopping,
            "workers": [
                {
                    "id": w.id,
                    "state": w.state.value,
                    "in_flight": w.in_flight,
                    "served": w.served,
                    "idle_seconds": round(w.idle_for(now), 2),
                    "age_seconds": round(now - w.started_at, 2),
                    "reason": w.reason,
                    "address": w.authority,
                    **self.describe(w.id),
                    **(self.cost.worker(w.id) if self.cost is not None else {}),
                }
                for w in self.pool.workers.values()
            ],
            "queue": {
                "length": self.pool.queued,
                "oldest_wait_seconds": round(now - oldest, 3) if oldest is not None else 0.0,
            },
            "scaling": {
                "active": self.config.workers.active,
                "max": self.config.workers.max,
                "strategy": self.config.scaling.strategy,
                "failed_starts_in_a_row": c.failed_starts,
                "next_start_allowed_in_seconds": round(max(0.0, c.blocked_until - now), 1),
                "last_start_failure": c.last_failure,
            },
            "leading": c.leading,
            "last_decisions": list(c.decisions),
            "start_failures": list(c.start_failures),
            "notices": self.notices(),
            **({"cost": self.cost.status(c.capped_reason)} if self.cost is not None else {}),
        }

    async def status_json(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    async def metrics(self, request: web.Request) -> web.Response:
        resp = web.Response(body=self.metrics_render())
        resp.content_type = "text/plain"
        resp.charset = "utf-8"
        return resp

    def counts_by_state(self) -> tuple[int, int, dict[str, int]]:
        by_state = {s.value: 0 for s in WorkerState if s is not WorkerState.EXITED}
        in_flight = 0
        for w in self.pool.workers.values():
            by_state[w.state.value] = by_state.get(w.state.value, 0) + 1
            in_flight += w.in_flight
        return self.pool.queued, in_flight, by_state
