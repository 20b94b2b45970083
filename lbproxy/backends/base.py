"""The shape every backend has: start a worker, stop one, stop all; report arrivals and exits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class WorkerAddress:
    """Where a new worker's app and health endpoint listen."""

    id: str
    host: str
    port: int
    health_port: int


class WorkerEvents(Protocol):
    """What a backend tells the controller. Called on the event loop."""

    def worker_added(self, address: WorkerAddress) -> None: ...

    def worker_exited(self, worker_id: str, reason: str) -> None: ...


class StartFailed(Exception):
    """The backend could not start a worker (bad command, no capacity). The message says why."""


class Backend(Protocol):
    """Runs workers. The proxy, pool and controller never know which backend it is."""

    async def start_worker(self) -> None:
        """Start one worker; ``worker_added`` is called before this returns. Raises StartFailed."""

    async def stop_worker(self, worker_id: str) -> None:
        """Stop a worker that no longer serves requests; returns once it is gone."""

    async def close(self) -> None:
        """Stop every worker (shutdown)."""

    def describe(self, worker_id: str) -> dict[str, object]:
        """Backend facts about a worker for /status (pid, pod name, ...); never secrets."""
