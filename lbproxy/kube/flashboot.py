"""flashboot node labels: nodes that ran this endpoint's workers recently, which the pod affinity prefers.

A node gets the label ``<flashboot_prefix><endpoint>=<unix time>`` when a worker runs there (at most once per
``FLASHBOOT_RELABEL`` per node and replica); at start and then hourly, the labels of nodes running a worker are
refreshed and labels older than ``FLASHBOOT_RETENTION`` go from the other nodes. Without the RBAC to patch or
list nodes, the part that needs it turns itself off with a notice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from ..config import Config
from .client import ApiException, KubeClient, describe_error
from .placement import expired_flashboot_nodes, flashboot_label
from .pod_watch import Pod

log = logging.getLogger("lbproxy.backend.kubernetes")

FLASHBOOT_RELABEL = 3600.0  # also the period of the flashboot label expiry
# How long a node's flashboot label means "ran this endpoint recently". A day spans the daily cycle flashboot is
# for (scaled down overnight, back up in the morning); after it, a busy GPU node has likely lost the image to
# the kubelet's image garbage collection (on disk pressure, or imageMaximumGCAge), and preferring it would only
# pull workers towards a node that pulls the image again anyway.
FLASHBOOT_RETENTION = 24 * 3600.0


class Flashboot:
    """Labels the nodes workers run on, and removes this endpoint's labels that grew old."""

    def __init__(
        self,
        client: KubeClient,
        config: Config,
        pods: Mapping[str, Pod],
        pods_known: asyncio.Event,
        notices: list[str],
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.key = flashboot_label(config)
        self.pods = pods  # the pod watch's, read only
        self.pods_known = pods_known
        self.notices = notices  # shown on /status; added to when a permission is missing
        self.clock = clock
        self.sleep = sleep
        self.labelling = config.flashboot  # off when nodes cannot be patched
        self._expiring = config.flashboot  # off when nodes cannot be listed
        self._labelled: dict[str, float] = {}  # node -> clock time this replica last labelled it
        self._tasks: set[asyncio.Task[None]] = set()

    def worker_running(self, node: str) -> None:
        """A worker just started running on ``node``: label it soon, unless done within the interval."""
        if self.labelling and self._label_due(node):
            task = asyncio.create_task(self._label(node), name=f"flashboot label {node}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _label_due(self, node: str) -> bool:
        """True (and counted as labelled now) when this replica has not labelled ``node`` within the interval."""
        now = self.clock()
        if now - self._labelled.get(node, -FLASHBOOT_RELABEL) < FLASHBOOT_RELABEL:
            return False
        self._labelled[node] = now
        return True

    def _cannot_patch_nodes(self) -> None:
        if self.labelling:
            self.labelling = False
            self.notices.append("flashboot: cannot label nodes (RBAC: patch nodes); recent-node "
                                "preference is off")
            log.warning("flashboot: no permission to label nodes; recent-node preference is off")

    async def _label(self, node: str) -> None:
        """Mark the node as having run this endpoint (image cached): flashboot prefers it on restarts."""
        try:
            await self.client.label_node(node, {self.key: str(int(time.time()))})
        except ApiException as exc:
            if exc.status == 403:
                self._cannot_patch_nodes()
            else:
                log.warning("flashboot: labelling node %s failed: %s", node, describe_error(exc))
        except Exception as exc:
            log.warning("flashboot: labelling node %s failed: %s", node, describe_error(exc))

    async def run(self) -> None:
        """Once the pods are known (at start), then every FLASHBOOT_RELABEL: see ``_expire_labels``."""
        await self.pods_known.wait()
        while self.labelling and self._expiring:
            await self._expire_labels()
            await self.sleep(FLASHBOOT_RELABEL)

    async def _expire_labels(self) -> None:
        """Keep "recently" true: refresh the label of nodes running a worker (one that runs for days must not
        look stale the moment it stops), and remove this endpoint's label from the other nodes once it is older
        than FLASHBOOT_RETENTION. The Deployment's affinity cannot compare ages; changing it would roll every pod.

        Each removal is conditional on the node's resourceVersion from the list: a node labelled again since
        (by this replica or another one) answers 409 and keeps its label.
        """
        for node in sorted({p.node for p in self.pods.values() if p.node and p.ip}):
            if self._label_due(node):
                await self._label(node)
        key = self.key
        try:
            nodes = await self.client.list_nodes(key)
        except ApiException as exc:
            if exc.status == 403:
                self._expiring = False
                self.notices.append(f"flashboot: cannot list nodes (RBAC: list nodes); node labels older than "
                                    f"{FLASHBOOT_RETENTION / 3600:g}h are not removed")
                log.warning("flashboot: no permission to list nodes; old flashboot labels are not removed")
            else:
                log.warning("flashboot: listing labelled nodes failed: %s", describe_error(exc))
            return
        except Exception as exc:
            log.warning("flashboot: listing labelled nodes failed: %s", describe_error(exc))
            return
        values = {n["metadata"]["name"]: (n["metadata"].get("labels") or {}).get(key, "") for n in nodes}
        versions = {n["metadata"]["name"]: n["metadata"].get("resourceVersion") for n in nodes}
        busy = {p.node for p in self.pods.values() if p.node}
        for node in expired_flashboot_nodes(values, time.time(), busy, FLASHBOOT_RETENTION):
            try:
                await self.client.label_node(node, {key: None}, versions[node])
            except ApiException as exc:
                if exc.status == 403:
                    self._cannot_patch_nodes()
                    return
                if exc.status in (404, 409):  # gone, or changed since the list: the next pass looks again
                    log.debug("flashboot: node %s changed before its label was removed (%s)", node, exc.status)
                else:
                    log.warning("flashboot: removing the label of node %s failed: %s", node, describe_error(exc))
            except Exception as exc:
                log.warning("flashboot: removing the label of node %s failed: %s", node, describe_error(exc))
            else:
                log.info("flashboot: removed the stale label %s=%s from node %s (retention %gh)", key,
                         values[node], node, FLASHBOOT_RETENTION / 3600)
