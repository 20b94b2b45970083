"""The only module that imports the official ``kubernetes`` client (its asyncio flavour, ``kubernetes.aio``).

It speaks plain dicts to the rest of lbproxy, so the backend reads like Kubernetes documents and tests can
run against any HTTP server that speaks the API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from kubernetes.aio import client, config, watch
from kubernetes.aio.client.exceptions import ApiException
from kubernetes.aio.leaderelection import electionconfig, leaderelection
from kubernetes.aio.leaderelection.resourcelock.leaselock import LeaseLock

__all__ = ["RETRY_MAX", "ApiException", "KubeClient", "describe_error", "is_unreachable"]

log = logging.getLogger("lbproxy.leader")

REQUEST_TIMEOUT = 10.0
RETRY_MAX = 30.0  # the longest pause between retries while the API is unreachable
_MERGE_PATCH = "application/merge-patch+json"  # RFC 7386: null deletes a key; no list-merge surprises
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class _LeaseLock(LeaseLock):
    """LeaseLock whose create works: kubernetes 37.0.2 passes ``pretty=True`` there, which its own generated
    API rejects (it validates ``pretty`` as a string), so no replica could ever create the Lease."""

    async def create(self, name: str, namespace: str, election_record: Any) -> bool:
        body = client.V1Lease(metadata=client.V1ObjectMeta(name=name), spec=self.update_lease(election_record))
        try:
            await self.api_instance.create_namespaced_lease(namespace, body)
        except ApiException as exc:
            log.warning("creating the leader Lease %s failed: %s %s", name, exc.status, exc.reason)
            return False
        return True


def _service_account_namespace() -> str:
    """The pod's own namespace (a tiny local file, read once at start)."""
    try:
        return _SA_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


def is_unreachable(exc: BaseException) -> bool:
    """An outage (network, 5xx, timeout) rather than a refusal the config must fix (4xx)."""
    if isinstance(exc, ApiException):
        return exc.status is None or exc.status >= 500 or exc.status == 429
    return isinstance(exc, OSError | TimeoutError) or type(exc).__module__.startswith("aiohttp")


def describe_error(exc: BaseException) -> str:
    """A failed call in a few words for logs and messages: the HTTP status and reason, or the exception."""
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class KubeClient:
    """The calls the kubernetes backend makes, and nothing else (the chart's RBAC lists exactly these)."""

    def __init__(self) -> None:
        self.api: client.ApiClient | None = None
        self.namespace = "default"  # where the workers run
        self.own_namespace = "default"  # where this proxy runs: its Lease and its peers live here

    async def open(self, kubeconfig: str | None, namespace: str | None) -> None:
        configuration = client.Configuration()
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=configuration)
            default_ns = _service_account_namespace()
        else:
            await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
            _, active = config.list_kube_config_contexts(kubeconfig)
            default_ns = (active or {}).get("context", {}).get("namespace", "default")
        self.namespace = namespace or default_ns
        self.own_namespace = os.environ.get("POD_NAMESPACE") or default_ns
        self.api = client.ApiClient(configuration)
        # Typed as Any: the generated signatures want model objects, lbproxy passes plain dicts (accepted).
        self.apps: Any = client.AppsV1Api(self.api)
        self.core: Any = client.CoreV1Api(self.api)
        self.coordination: Any = client.CoordinationV1Api(self.api)

    async def close(self) -> None:
        if self.api is not None:
            await self.api.close()

    # -- deployments ---------------------------------------------------------------------------

    async def get_deployment(self, name: str) -> dict[str, Any] | None:
        try:
            return await self._raw(self.apps.read_namespaced_deployment_without_preload_content(
                name, self.namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def create_deployment(self, doc: dict[str, Any]) -> dict[str, Any]:
        return await self._raw(self.apps.create_namespaced_deployment_without_preload_content(self.namespace, doc))

    async def replace_deployment(self, doc: dict[str, Any]) -> dict[str, Any]:
        """PUT with the document's resourceVersion: a concurrent change gives 409, never a lost update."""
        name = doc["metadata"]["name"]
        return await self._raw(self.apps.replace_namespaced_deployment_without_preload_content(
            name, self.namespace, doc))

    async def scale(self, name: str, replicas: int) -> None:
        await self._raw(self.apps.patch_namespaced_deployment_scale_without_preload_content(
            name, self.namespace, {"spec": {"replicas": replicas}}, _content_type=_MERGE_PATCH))

    # -- services and volumes ------------------------------------------------------------------

    async def apply_service(self, doc: dict[str, Any]) -> None:
        name = doc["metadata"]["name"]
        try:
            current = await self._raw(self.core.read_namespaced_service_without_preload_content(
                name, self.namespace))
        except ApiException as exc:
            if exc.status != 404:
                raise
            await self._raw(self.core.create_namespaced_service_without_preload_content(self.namespace, doc))
            return
        doc = {**doc, "metadata": {**doc["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
        doc["spec"] = {**current.get("spec", {}), **doc["spec"]}  # keep clusterIP and other server-set fields
        await self._raw(self.core.replace_namespaced_service_without_preload_content(name, self.namespace, doc))

    async def pvc(self, name: str) -> dict[str, Any] | None:
        try:
            return await self._raw(self.core.read_namespaced_persistent_volume_claim_without_preload_content(
                name, self.namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    # -- pods ----------------------------------------------------------------------------------

    async def list_pods(self, selector: str, namespace: str | None = None) -> tuple[list[dict[str, Any]], str]:
        body = await self._raw(self.core.list_namespaced_pod_without_preload_content(
            namespace or self.namespace, label_selector=selector))
        return body.get("items", []), body["metadata"]["resourceVersion"]

    async def watch_pods(self, selector: str, resource_version: str,
                         server_timeout: int = 300) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Pod events after ``resource_version``. Raises ApiException(410) when that version is too old."""
        w: Any = watch.Watch()
        try:
            async for event in w.stream(self.core.list_namespaced_pod, self.namespace, label_selector=selector,
                                        resource_version=resource_version, timeout_seconds=server_timeout,
                                        allow_watch_bookmarks=True):
                yield event["type"], event["raw_object"]
        finally:
            await w.close()

    async def annotate_pod(self, name: str, annotations: dict[str, str | None]) -> None:
        await self._raw(self.core.patch_namespaced_pod_without_preload_content(
            name, self.namespace, {"metadata": {"annotations": annotations}}, _content_type=_MERGE_PATCH))

    # -- nodes ---------------------------------------------------------------------------------

    async def list_nodes(self, selector: str) -> list[dict[str, Any]]:
        body = await self._raw(self.core.list_node_without_preload_content(label_selector=selector))
        items: list[dict[str, Any]] = body.get("items", [])
        return items

    async def label_node(self, node: str, labels: dict[str, str | None], resource_version: str | None = None) -> None:
        """Set labels (None removes one). With ``resource_version`` the patch is conditional: 409 Conflict when
        the node changed since that version was read."""
        meta: dict[str, Any] = {"labels": labels}
        if resource_version is not None:
            meta["resourceVersion"] = resource_version
        await self._raw(self.core.patch_node_without_preload_content(
            node, {"metadata": meta}, _content_type=_MERGE_PATCH))

    # -- leader election -----------------------------------------------------------------------

    async def lead(self, lease: str, identity: str, on_lead: Callable[[], Awaitable[None]],
                   duration: int, renew: int, retry: int) -> None:
        """Run ``on_lead()`` whenever this replica holds the Lease; cancel it the moment the Lease is lost.

        The library's LeaderElection returns (or raises, when the API is unreachable) on loss; then this
        replica is a follower again and campaigns anew.
        """
        while True:
            leading: list[asyncio.Task[None]] = []

            async def started(leading: list[asyncio.Task[None]] = leading) -> None:
                task = asyncio.current_task()
                assert task is not None
                leading.append(task)
                log.info("%s leads endpoint scaling (lease %s)", identity, lease)
                await on_lead()

            async def stopped() -> None:
                return None  # the loop below cancels the leading task

            assert self.api is not None
            lock = _LeaseLock(lease, self.own_namespace, identity, self.api)
            election = leaderelection.LeaderElection(electionconfig.Config(
                lock, lease_duration=duration, renew_deadline=renew, retry_period=retry,
                onstarted_leading=started, onstopped_leading=stopped))
            try:
                await election.run()
            except asyncio.CancelledError:
                for task in leading:
                    task.cancel()
                raise
            except Exception as exc:
                log.warning("leader election interrupted: %s", exc)
            for task in leading:
                if not task.done():
                    log.warning("%s lost the lease: stops scaling", identity)
                    task.cancel()
            await asyncio.gather(*leading, return_exceptions=True)
            await asyncio.sleep(retry)

    async def release_lease(self, lease: str, identity: str) -> None:
        """Give the Lease up at shutdown so that another replica takes over at once, not after it expires."""
        current = await self._raw(self.coordination.read_namespaced_lease_without_preload_content(
            lease, self.own_namespace))
        if (current.get("spec") or {}).get("holderIdentity") != identity:
            return
        await self._raw(self.coordination.patch_namespaced_lease_without_preload_content(
            lease, self.own_namespace, {"spec": {"holderIdentity": None}}, _content_type=_MERGE_PATCH))

    @staticmethod
    async def _raw(call: Any) -> dict[str, Any]:
        """The response body as a dict; a non-2xx status raises ApiException like the typed calls do."""
        async with asyncio.timeout(REQUEST_TIMEOUT):  # a hung API server must not hang scaling or shutdown
            resp = await call  # the aiohttp response itself (kubernetes.aio's *_without_preload_content)
            try:
                raw = await resp.read()
            finally:
                resp.release()
        if not 200 <= resp.status < 300:
            raise ApiException(status=resp.status, reason=resp.reason, body=raw.decode("utf-8", "replace"))
        data: dict[str, Any] = json.loads(raw) if raw else {}
        return data
