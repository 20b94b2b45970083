"""A queue endpoint's lifecycle: store, service, the two APIs, workers and scaling; then a clean stop.

Stop order (SIGTERM/SIGINT): refuse new jobs, stop scaling, stop the workers (an SDK worker finishes its
job and posts the result, so the worker API stays up until they are gone), then close the store. Jobs
still running are requeued at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..admin import Admin
from ..backends.base import Backend, StartFailed, WorkerAddress
from ..backends.local import LocalBackend
from ..checks import notices
from ..config import Config
from ..controller import Controller, Prober
from ..cost import CostMeter
from ..dashboard import Dashboard
from ..health import HealthProber
from ..leadership import lead
from ..metrics import Metrics
from ..paths import endpoint_file
from ..policy import WorkerState
from ..policy_settings import scaling_settings
from ..pool import WorkerPool
from ..server import BindError, Reloader, _start_site, _url, apply_scaling, bind
from .client_api import ClientApi
from .http_delivery import HttpDelivery
from .sdk_env import worker_env
from .service import QueueService
from .stores import described, store_for
from .worker_api import WorkerApi

log = logging.getLogger("lbproxy")

WORKER_KEY_ENV = "LBPROXY_WORKER_KEY"  # Kubernetes: the worker pods' key (queue.worker_key_secret)


class QueueAdmin(Admin):
    """The admin port of a queue endpoint: its queue is the job store's, not the pool's (empty here)."""

    service: QueueService
    store_where = ""

    def status(self) -> dict[str, Any]:
        status = super().status()
        load = self.service.last_load
        oldest = load.oldest_created_at
        status["queue"] = {
            "length": load.queued, "in_progress": load.in_progress,
            "oldest_wait_seconds": round(max(0.0, self.service.clock() - oldest), 3) if oldest is not None else 0.0,
            "note": "jobs as of the controller's latest tick; low-priority jobs are not counted",
        }
        store = self.service.store
        status["store"] = {"where": self.store_where, "shared": store.shared, "notifications": store.listening,
                           "unavailable": self.service.store_down}
        return status

    def queued_here(self) -> tuple[int, float | None]:
        """Nothing: jobs wait in the store every replica reads, and the leader counts them there. The pool's one
        waiter is the http delivery's dispatch loop, not a job."""
        return 0, None

    def counts_by_state(self) -> tuple[int, int, dict[str, int]]:
        _, in_flight, by_state = super().counts_by_state()
        return self.service.last_load.queued, in_flight, by_state


class QueueEvents:
    """The backend's worker events for the controller, and worker exits for the queue too (requeue at once)."""

    def __init__(self, controller: Controller, service: QueueService) -> None:
        self.controller = controller
        self.service = service
        self._tasks: set[asyncio.Task[None]] = set()

    def worker_added(self, address: WorkerAddress) -> None:
        self.controller.worker_added(address)

    def worker_exited(self, worker_id: str, reason: str) -> None:
        self.controller.worker_exited(worker_id, reason)
        task = asyncio.create_task(self.service.worker_gone(worker_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def worker_address(self, worker_id: str, host: str) -> None:
        self.controller.worker_address(worker_id, host)

    def worker_terminating(self, worker_id: str, reason: str) -> None:
        self.controller.worker_terminating(worker_id, reason)

    def worker_draining(self, worker_id: str, draining: bool) -> None:
        self.controller.worker_draining(worker_id, draining)

    async def close(self) -> None:
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _bind_all(config: Config) -> list[socket.socket]:
    """listen, admin and queue.worker_listen, bound before anything starts; BindError names the key."""
    socks: list[socket.socket] = []
    try:
        for key, address in (("listen", config.listen), ("admin", config.admin),
                             ("queue.worker_listen", config.queue.worker_listen)):
            socks.append(bind(key, address))
    except BindError:
        for sock in socks:
            sock.close()
        raise
    return socks


async def serve_queue(config: Config, stop: asyncio.Event, environ: Mapping[str, str] | None,
                      path: str | None = None) -> int:
    loop = asyncio.get_running_loop()
    q = config.queue
    try:  # a port in use stops lbproxy before it opens the store or starts a worker
        listen_sock, admin_sock, worker_sock = _bind_all(config)
    except BindError as exc:
        log.error("%s", exc)
        return 2
    metrics = Metrics(config.name)
    # Jobs wait in the store, not in the pool (limits.max_queue has no effect): its one waiter is the http
    # delivery's dispatch loop, waiting for a free worker slot.
    pool = WorkerPool(config.workers.concurrency, 1, config.timeouts.wait)
    store = store_for(config, environ)
    where = described(config, environ)
    stopping_tasks: set[asyncio.Task[bool]] = set()
    backend: Backend | None = None
    kube = config.backend.type == "kubernetes"

    def retire(worker_id: str, why: str) -> None:
        w = pool.get(worker_id)
        if w is None or backend is None or w.state in (WorkerState.STOPPING, WorkerState.EXITED):
            return
        pool.set_state(w, WorkerState.STOPPING, why)
        task = asyncio.create_task(backend.stop_worker(worker_id))
        stopping_tasks.add(task)
        task.add_done_callback(stopping_tasks.discard)

    service = QueueService(config, store, pool, retire)
    if kube:  # worker pods share one key (a Secret) and are told apart by their pod IP (README)
        service.pod_key = (environ if environ is not None else os.environ).get(WORKER_KEY_ENV, "").encode() or None
        if service.pod_key is None and q.delivery == "sdk":
            log.error("%s is not set: worker pods could not authenticate (the Helm chart sets it from "
                      "queue.worker_key_secret)", WORKER_KEY_ENV)
            for sock in (listen_sock, admin_sock, worker_sock):
                sock.close()
            return 2
    sdk = q.delivery == "sdk"
    prober: Prober | HealthProber = service if sdk else HealthProber(pool, config.worker.health_path)
    controller = Controller(scaling_settings(config), pool, prober, metrics, snapshot=service.snapshot)
    # Billed as a load balancer's workers are (README "Cost"), busy while they hold a job; subscribed to the pool
    # before any worker appears.
    meter = CostMeter(config, pool, lambda wid: backend.describe(wid) if backend is not None else {},
                      endpoint_file(config.name, "cost.json"))
    controller.limit_starts = meter.limit_starts
    events = QueueEvents(controller, service)
    try:
        await service.start()
    except Exception as exc:  # an unreadable or locked store: say where, exit 2 like a bad config
        log.error("cannot open the job store %s: %s", where, exc)
        for sock in (listen_sock, admin_sock, worker_sock):
            sock.close()
        return 2
    grace = config.timeouts.shutdown
    worker_runner, worker_url = await _start_site(WorkerApi(config, service).app(), worker_sock, grace)
    host, port = worker_runner.addresses[0][:2]
    reach = _url({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port)

    def env_for(worker_id: str) -> dict[str, str]:
        if not sdk:
            return {}
        session = service.session_for(worker_id)
        return worker_env(reach, config.name, worker_id, session.secret.decode(), q.ping_interval, config.worker.env)

    try:
        if kube:
            from ..backends.kubernetes import KubernetesBackend  # the kubernetes extra

            backend = kube_backend = KubernetesBackend(config, events)
            try:
                await kube_backend.open()
            except BaseException:
                await kube_backend.close()
                raise
        else:
            backend = local = LocalBackend(config, events, environ, worker_env=env_for)
            await local.clean_up_leftovers()  # workers a crashed lbproxy of this endpoint left running
    except StartFailed as exc:
        log.error("cannot start: %s", exc)
        await worker_runner.cleanup()
        await service.close()
        listen_sock.close()
        admin_sock.close()
        return 2
    delivery = None
    if not sdk:
        assert isinstance(prober, HealthProber)
        await prober.start()
        delivery = HttpDelivery(config, service, pool)
        await delivery.start()
    config_notices = notices(config)
    backend_notices: list[str] = getattr(backend, "notices", [])
    for notice in [*config_notices, *backend_notices]:
        log.warning("%s", notice)
    client = ClientApi(config, service)
    if not client.keys.enabled:
        log.warning("auth.api_keys is empty: the endpoint is open to anyone who can reach %s", config.listen)
    admin = QueueAdmin(config, pool, controller, metrics.render, backend.describe, lambda: config_notices,
                       getattr(backend, "status", None), meter)
    admin.service = service
    admin.store_where = where
    admin.dashboard = dashboard = Dashboard(pool, metrics.requests, metrics.queue_wait, meter, admin.counts_by_state)
    metrics.watch(admin.counts_by_state, lambda: controller.leading)
    metrics.watch_cost(meter.metric_rows, lambda: controller.capped_reason is not None)
    client_runner, client_url = await _start_site(client.app(), listen_sock, grace,
                                                  client.access_log(metrics.observe_request))
    admin_runner, admin_url = await _start_site(admin.app(), admin_sock, grace)
    log.info("queue endpoint %s listening on %s/v2/%s (admin %s, worker API %s, store %s), workers %d..%d, "
             "delivery %s", config.name, client_url, config.name, admin_url, worker_url, where,
             config.workers.active, config.workers.max, q.delivery)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def apply_live(new: Config) -> None:
        service.reload(new)
        client.reload(new)
        apply_scaling(new, pool, controller, meter, admin)

    reloader = Reloader(path, config, environ, apply_live)
    loop.add_signal_handler(signal.SIGHUP, reloader)
    role = None
    release: Callable[[], Awaitable[None]] | None = None
    if kube and config.backend.leader_election:  # the Lease holder scales, counting every replica's load
        control, release = lead(config, kube_backend, controller, environ or os.environ)
    elif store.shared and not kube:  # local replicas on one queue: the advisory lock's holder scales
        from .leader import ReplicaRole
        from .postgres import PostgresJobStore

        assert isinstance(store, PostgresJobStore)
        role = ReplicaRole(store, controller, pool, lambda: scaling_settings(reloader.config))  # reloads too
        await role.step()  # the controller's first decision already knows this replica's role
    if release is None:
        control = asyncio.create_task(controller.run(backend), name="controller")
    stopping = asyncio.create_task(stop.wait())
    sampling = asyncio.create_task(dashboard.run(), name="dashboard sampler")
    roots = {control, stopping, sampling, *(t for t in (service.sweeper, delivery and delivery.task) if t)}
    if role is not None:
        await asyncio.sleep(0)  # controller.run marks itself leading as it starts: the role says otherwise
        controller.leading = role.leading
        roots.add(asyncio.create_task(role.run(), name="replica role"))
    exit_code = 0
    try:
        await asyncio.wait(roots, return_when=asyncio.FIRST_COMPLETED)
        failed = next((t for t in roots if t.done() and t is not stopping), None)
        if failed is not None:  # the controller and the sweeper never return on their own: a bug, so stop
            exit_code = 1
            log.critical("%s stopped: %r; shutting down", failed.get_name(), failed.exception(),
                         exc_info=failed.exception())
        else:
            log.info("shutting down: workers finish their jobs (at most worker.stop_grace)")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        admin.stopping = client.stopping = True
        pool.close()
        stopping.cancel()
        for task in roots - {stopping}:
            if task is not service.sweeper:
                task.cancel()
        for task in roots - {stopping}:
            if task is not service.sweeper:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if release is not None:
            with contextlib.suppress(Exception):
                await release()
        await client_runner.cleanup()
        if delivery is not None:
            await delivery.close()
        await controller.shutdown()
        await asyncio.gather(*stopping_tasks, return_exceptions=True)
        await events.close()
        await dashboard.close()  # the cost totals, after every local worker stopped
        if isinstance(prober, HealthProber):
            await prober.close()
        await worker_runner.cleanup()
        await admin_runner.cleanup()
        await service.close()
        log.info("endpoint %s stopped", config.name)
    return exit_code
