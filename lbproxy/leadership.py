"""Leader election for the kubernetes backend: every proxy replica routes, only the holder of the Lease scales.

The holder of the Lease ``lbproxy-<name>`` runs the controller, summing the other replicas' load (read from
their admin ports when ``backend.proxy_selector`` finds them). It stops scaling the moment the Lease is lost,
and gives the Lease up at shutdown so that another replica takes over at once rather than when it expires.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from .config import Config
from .controller import Controller

if TYPE_CHECKING:
    from .backends.kubernetes import KubernetesBackend

LEASE_SECONDS = 6  # a dead leader is replaced within about this long (whole seconds: the Lease's unit)
RENEW_SECONDS = 4
RETRY_SECONDS = 1


def lead(
    config: Config, kube: KubernetesBackend, controller: Controller, environ: Mapping[str, str]
) -> tuple[asyncio.Task[None], Callable[[], Awaitable[None]]]:
    """Start campaigning: the task scales while this replica leads; the callable releases the Lease."""
    identity = environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
    lease = f"lbproxy-{config.name}"
    from .kube.peers import PeerLoads  # the kubernetes extra: imported only with that backend

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
