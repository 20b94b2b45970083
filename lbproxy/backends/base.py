"""The shape every backend has: start a worker, stop one, stop all; report arrivals and exits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class WorkerAddress:
    """Where a new worker's app and health endpoint listen."""

    id: str
    host: str  # "" while not known yet (a pod not scheduled): the worker is starting, not probed
    port: int
    health_port: int
    rank: int = 0  # placement preference (GPU category index); 0 = first choice


class WorkerEvents(Protocol):
    """What a backend tells the controller. Called on the event loop."""

    def worker_added(self, address: WorkerAddress) -> None: ...

    def worker_exited(self, worker_id: str, reason: str) -> None: ...

    def worker_address(self, worker_id: str, host: str) -> None:
        """A worker added without an address has one now (its pod got an IP)."""

    def worker_terminating(self, worker_id: str, reason: str) -> None:
        """The worker is being stopped by someone else (pod deleted, node drained): no new requests."""

    def worker_draining(self, worker_id: str, draining: bool) -> None:
        """The leading replica marked (or unmarked) the worker for scale-down."""


class StartFailed(Exception):
    """The backend could not start a worker (bad command, no capacity). The message says why."""


class Backend(Protocol):
    """Runs workers. The proxy, pool and controller never know which backend it is."""

    async def start_worker(self) -> None:
        """Start one worker; ``worker_added`` is called before this returns. Raises StartFailed."""

    async def stop_worker(self, worker_id: str) -> bool:
        """Stop a worker that no longer serves requests. False when another worker went instead (the
        Kubernetes ReplicaSet chose), so the controller can put this one back into rotation."""

    async def mark_draining(self, worker_id: str, draining: bool) -> None:
        """Tell every proxy replica to stop (or resume) routing to the worker. Raises StartFailed."""

    async def close(self) -> None:
        """Stop every worker (shutdown)."""

    def describe(self, worker_id: str) -> dict[str, object]:
        """Backend facts about a worker for /status (pid, pod name, ...); never secrets."""

    @property
    def pending_starts(self) -> int:
        """Starts accepted whose workers were not reported yet."""
        ...
