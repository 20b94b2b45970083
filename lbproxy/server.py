"""The endpoint's lifecycle: wire config, pool, controller, backend, proxy and admin; run; shut down cleanly.

Shutdown order (SIGTERM/SIGINT): refuse new and queued requests, stop scaling, let in-flight requests finish
for at most ``timeouts.shutdown``, then stop every worker and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_log import AccessLogger

from . import logs
from .admin import Admin
from .backends.base import Backend, StartFailed
from .backends.local import LocalBackend
from .checks import backend_problems, notices
from .config import Address, Config, ConfigError, load_config
from .controller import Controller
from .cost import CostMeter
from .dashboard import Dashboard
from .health import HealthProber
from .leadership import lead
from .metrics import Metrics
from .paths import endpoint_file
from .policy_settings import scaling_settings
from .pool import WorkerPool
from .proxy.settings import ProxySettings
from .proxy.site import ProxyServer
from .reload import changes

log = logging.getLogger("lbproxy")


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def bind(key: str, address: Address) -> socket.socket:
    """A listening socket for ``address``; BindError names the key, the address and why (a port in use)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        return socket.create_server((address.host, address.port), family=family, backlog=1024)
    except OSError as exc:
        why = "the address is already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
        raise BindError(f"{key}: cannot listen on {address}: {why}") from None


class BindError(Exception):
    """A listen address lbproxy could not bind; the message is the one line the operator sees."""


async def _start_site(app: web.Application, sock: socket.socket, grace: float,
                      access_log: type[AbstractAccessLogger] | None = None) -> tuple[web.AppRunner, str]:
    """Serve ``app`` on ``sock``; ``access_log``: the class that writes its access lines (none: no lines)."""
    logger = None if access_log is None else logging.getLogger(logs.ACCESS_LOGGER)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=grace, access_log=logger,
                           access_log_class=access_log or AccessLogger)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    bound = runner.addresses[0]
    return runner, _url(bound[0], bound[1])


class Reloader:
    """SIGHUP: read the config file again and hand what may change live (``lbproxy.reload``) to ``apply``, or
    keep the running config and say why in one line. Both endpoint types reload through it."""

    def __init__(self, path: str | None, config: Config, environ: Mapping[str, str] | None,
                 apply: Callable[[Config], None]) -> None:
        self.path = path
        self.config = config
        self.environ = environ
        self.apply = apply

    def __call__(self) -> None:
        if self.path is None:
            log.warning("SIGHUP: no config file to reload (lbproxy was started without one); ignored")
            return
        try:
            new = load_config(self.path, self.environ)
        except ConfigError as exc:
            log.error("reload refused, the running config is kept: %s is not a valid config: %s", self.path,
                      "; ".join(exc.problems))
            return
        problems = backend_problems(new)
        live, restart = changes(self.config, new)
        if problems or restart:
            why = "; ".join(problems) if problems else f"{', '.join(restart)} can only change with a restart"
            log.error("reload refused, the running config is kept: %s", why)
            return
        if not live:
            log.info("reload: %s has no changes", self.path)
            return
        self.config = new
        self.apply(new)
        logs.set_format(new.log.format, new.name)
        log.info("reloaded %s: %s", self.path, ", ".join(live))


def apply_scaling(new: Config, pool: WorkerPool, controller: Controller, meter: CostMeter, admin: Admin) -> None:
    """The live settings both endpoint types share: worker counts and concurrency, scaling, the bill's active
    tier, what /status shows. The controller decides again at once."""
    pool.concurrency = new.workers.concurrency
    controller.settings = scaling_settings(new)
    meter.set_active(new.workers.active)
    admin.config = new
    pool.changed.set()


def _apply_live(new: Config, pool: WorkerPool, controller: Controller, proxy: ProxyServer, admin: Admin,
                meter: CostMeter) -> None:
    """A load balancer's live settings; a request in progress keeps those it started with."""
    pool.max_queue = new.limits.max_queue
    pool.wait_timeout = new.timeouts.wait
    proxy.settings = ProxySettings.from_config(new)
    apply_scaling(new, pool, controller, meter, admin)
    pool.redispatch()  # more concurrency may serve waiting requests now


async def serve(config: Config, stop: asyncio.Event | None = None, environ: Mapping[str, str] | None = None,
                path: str | None = None) -> int:
    """Run the endpoint until ``stop`` is set (or SIGTERM/SIGINT; SIGHUP reloads ``path``). Returns the exit code."""
    stop = stop or asyncio.Event()
    if config.type == "queue":
        from .queue.endpoint import serve_queue

        return await serve_queue(config, stop, environ, path)
    loop = asyncio.get_running_loop()
    try:  # first of all: a port in use must stop lbproxy before it starts a worker or opens a session
        listen_sock = bind("listen", config.listen)
        try:
            admin_sock = bind("admin", config.admin)
        except BindError:
            listen_sock.close()
            raise
    except BindError as exc:
        log.error("%s", exc)
        return 2
    metrics = Metrics(config.name)
    pool = WorkerPool(config.workers.concurrency, config.limits.max_queue, config.timeouts.wait)
    prober = HealthProber(pool, config.worker.health_path)
    controller = Controller(scaling_settings(config), pool, prober, metrics)
    backend: Backend
    # Subscribed to the pool before any worker appears; asks the backend about workers (pod start times) later.
    meter = CostMeter(config, pool, lambda wid: backend.describe(wid), endpoint_file(config.name, "cost.json"))
    controller.limit_starts = meter.limit_starts
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
        listen_sock.close()
        admin_sock.close()
        return 2
    config_notices = notices(config)
    backend_notices: list[str] = getattr(backend, "notices", [])  # the backend may add some later (RBAC)
    for notice in [*config_notices, *backend_notices]:
        log.warning("%s", notice)
    proxy = ProxyServer(pool, metrics, ProxySettings.from_config(config))
    if not proxy.settings.keys.enabled:
        log.warning("auth.api_keys is empty: the endpoint is open to anyone who can reach %s:%d",
                    config.listen.host, config.listen.port)
    admin = Admin(config, pool, controller, metrics.render, backend.describe,
                  lambda: [*config_notices, *backend_notices],
                  getattr(backend, "status", None), meter)
    admin.dashboard = dashboard = Dashboard(pool, metrics.requests, metrics.queue_wait, meter, admin.counts_by_state)
    metrics.watch(admin.counts_by_state, lambda: controller.leading)
    metrics.watch_cost(meter.metric_rows, lambda: controller.capped_reason is not None)

    await prober.start()
    proxy_url = _url(*await proxy.start(listen_sock))
    admin_runner, admin_url = await _start_site(admin.app(), admin_sock, config.timeouts.shutdown)
    log.info("endpoint %s listening on %s (admin %s), workers %d..%d, backend %s",
             config.name, proxy_url, admin_url, config.workers.active, config.workers.max, config.backend.type)

    reloader = Reloader(path, config, environ, lambda new: _apply_live(new, pool, controller, proxy, admin, meter))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloader)  # nginx and HAProxy's convention (and a closed terminal)
    release: Callable[[], Awaitable[None]] | None = None
    if config.backend.type == "kubernetes" and config.backend.leader_election:
        control, release = lead(config, kube, controller, environ or os.environ)
    else:
        control = asyncio.create_task(controller.run(backend), name="controller")
    stopping = asyncio.create_task(stop.wait())
    sampling = asyncio.create_task(dashboard.run(), name="dashboard sampler")
    exit_code = 0
    try:
        await asyncio.wait({control, stopping, sampling}, return_when=asyncio.FIRST_COMPLETED)
        for task, what in ((control, "controller"), (sampling, "dashboard sampler")):
            if task.done():  # it never returns on its own: this is a bug, so stop rather than limp
                exit_code = 1
                failure = task.exception()
                log.critical("%s stopped: %r; shutting down", what, failure, exc_info=failure)
                break
        else:
            log.info("shutting down: finishing in-flight requests (at most %gs)", reloader.config.timeouts.shutdown)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        admin.stopping = True
        pool.close()
        stopping.cancel()
        control.cancel()
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await control
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sampling
        if release is not None:
            with contextlib.suppress(Exception):
                await release()
        await proxy.cleanup(reloader.config.timeouts.shutdown)  # stops accepting, waits for in-flight (bounded)
        await controller.shutdown()
        await dashboard.close()  # the cost totals, after every local worker stopped
        await prober.close()
        await admin_runner.cleanup()
        log.info("endpoint %s stopped", config.name)
    return exit_code
