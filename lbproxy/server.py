"""The endpoint's lifecycle: wire config, pool, controller, backend, proxy and admin; run; shut down cleanly.

Shutdown order (SIGTERM/SIGINT): refuse new and queued requests, stop scaling, let in-flight requests finish
for at most ``timeouts.shutdown``, then stop every worker and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from .admin import Admin
from .backends.base import Backend, StartFailed
from .backends.local import LocalBackend
from .checks import notices
from .config import Config
from .controller import Controller
from .health import HealthProber
from .metrics import Metrics
from .policy import ScalingSettings
from .pool import WorkerPool
from .proxy import Proxy

if TYPE_CHECKING:
    from .backends.kubernetes import KubernetesBackend

log = logging.getLogger("lbproxy")


def scaling_settings(config: Config) -> ScalingSettings:
    return ScalingSettings(
        active=config.workers.active,
        max=config.workers.max,
        concurrency=config.workers.concurrency,
        strategy=config.scaling.strategy,
        queue_delay=config.scaling.queue_delay,
        requests_per_worker=config.scaling.requests_per_worker,
        idle_timeout=config.timeouts.idle,
        init_timeout=config.timeouts.init,
    )


LEASE_SECONDS = 6  # a dead leader is replaced within about this long (whole seconds: the Lease's unit)
RENEW_SECONDS = 4
RETRY_SECONDS = 1


def _lead(
    config: Config, kube: KubernetesBackend, controller: Controller, environ: Mapping[str, str]
) -> tuple[asyncio.Task[None], Callable[[], Awaitable[None]]]:
    """Scale only while this replica holds the endpoint's Lease; every replica routes regardless."""
    identity = environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    lease = f"lbproxy-{config.name}"
    from .kube.peers import PeerLoads

    selector = config.backend.proxy_selector
    peers = PeerLoads(kube.client, selector, config.admin.port, environ.get("POD_IP")) if selector else None

    async def on_lead() -> None:
        poll = asyncio.create_task(peers.run()) if peers is not None else None
        if peers is not None:
            controller.peer_loads = peers.loads
        try:
            await controller.run(kube)
        finally:
            controller.peer_loads = tuple
            if poll is not None:
                poll.cancel()

    task = asyncio.create_task(
        kube.client.lead(lease, identity, on_lead, LEASE_SECONDS, RENEW_SECONDS, RETRY_SECONDS), name="leader")
    return task, lambda: kube.client.release_lease(lease, identity)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def _start_site(app: web.Application, host: str, port: int, grace: float) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=grace, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    bound = runner.addresses[0]
    return runner, _url(bound[0], bound[1])


ENGINES = ("aiohttp", "fast")


def _engine(environ: Mapping[str, str]) -> str | None:
    """The proxy engine named by ``LBPROXY_ENGINE``: ``fast`` (lbproxy/fast, the default) or ``aiohttp``
    (lbproxy/proxy.py, which serves WebSocket sessions either way)."""
    engine = environ.get("LBPROXY_ENGINE", "fast").strip().lower() or "fast"
    if engine not in ENGINES:
        log.error("LBPROXY_ENGINE=%s: use one of %s", engine, ", ".join(ENGINES))
        return None
    if engine == "fast":
        try:
            import httptools  # noqa: F401
        except ImportError:
            log.error("the fast engine needs httptools (a dependency of lbproxy): reinstall lbproxy, "
                      "or set LBPROXY_ENGINE=aiohttp")
            return None
    return engine


async def _start_fast(proxy: Proxy, host: str, port: int, grace: float) -> tuple[Callable[[], Awaitable[None]], str]:
    from .fast.site import FastServer

    fast = FastServer(proxy)
    bound = await fast.start(host, port)
    return (lambda: fast.cleanup(grace)), _url(*bound)


async def serve(config: Config, stop: asyncio.Event | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run the endpoint until ``stop`` is set (or SIGTERM/SIGINT). Returns the process exit code."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    engine = _engine(environ or os.environ)
    if engine is None:
        return 2
    metrics = Metrics(config.name)
    pool = WorkerPool(config.workers.concurrency, config.limits.max_queue, config.timeouts.wait)
    prober = HealthProber(pool, config.worker.health_path)
    controller = Controller(scaling_settings(config), pool, prober, metrics)
    backend: Backend
    try:
        if config.backend.type == "kubernetes":
            from .backends.kubernetes import KubernetesBackend  # needs the kubernetes extra

            kube = KubernetesBackend(config, controller)
            backend = kube
            try:
                await kube.open()
            except BaseException:
                await kube.close()
                raise
        else:
            local = LocalBackend(config, controller, environ)
            await local.clean_up_leftovers()
            backend = local
    except StartFailed as exc:
        log.error("cannot start: %s", exc)
        return 2
    config_notices = notices(config)
    backend_notices: list[str] = getattr(backend, "notices", [])  # the backend may add some later (RBAC)
    for notice in [*config_notices, *backend_notices]:
        log.warning("%s", notice)
    proxy = Proxy(config, pool, metrics)
    if not proxy.keys.enabled:
        log.warning("auth.api_keys is empty: the endpoint is open to anyone who can reach %s:%d",
                    config.listen.host, config.listen.port)
    admin = Admin(config, pool, controller, metrics.render, backend.describe,
                  lambda: [*config_notices, *backend_notices],
                  getattr(backend, "status", None))
    metrics.watch(admin.counts_by_state, lambda: controller.leading)

    app = web.Application()
    app.router.add_route("*", r"/{tail:[\s\S]*}", proxy.handle)  # [\s\S]: a path may hold %0A
    grace = config.timeouts.shutdown
    await prober.start()
    await proxy.start()
    if engine == "fast":
        stop_proxy, proxy_url = await _start_fast(proxy, config.listen.host, config.listen.port, grace)
    else:
        proxy_runner, proxy_url = await _start_site(app, config.listen.host, config.listen.port, grace)
        stop_proxy = proxy_runner.cleanup
    admin_runner, admin_url = await _start_site(admin.app(), config.admin.host, config.admin.port, grace)
    log.info("endpoint %s listening on %s (admin %s), workers %d..%d, backend %s, engine %s",
             config.name, proxy_url, admin_url, config.workers.active, config.workers.max, config.backend.type, engine)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    release: Callable[[], Awaitable[None]] | None = None
    if config.backend.type == "kubernetes" and config.backend.leader_election:
        control, release = _lead(config, kube, controller, environ or os.environ)
    else:
        control = asyncio.create_task(controller.run(backend), name="controller")
    stopping = asyncio.create_task(stop.wait())
    exit_code = 0
    try:
        await asyncio.wait({control, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if control.done():  # the controller never returns on its own: this is a bug, so stop rather than limp
            exit_code = 1
            failure = control.exception()
            log.critical("controller stopped: %r; shutting down", failure, exc_info=failure)
        else:
            log.info("shutting down: finishing in-flight requests (at most %gs)", grace)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        admin.stopping = True
        pool.close()
        stopping.cancel()
        control.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await control
        if release is not None:
            with contextlib.suppress(Exception):
                await release()
        await stop_proxy()  # stops accepting, waits for in-flight requests (bounded)
        await controller.shutdown()
        await prober.close()
        await proxy.close()
        await admin_runner.cleanup()
        log.info("endpoint %s stopped", config.name)
    return exit_code
