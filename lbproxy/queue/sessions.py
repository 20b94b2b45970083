"""What the queue service knows about each SDK worker it started: its secret, the jobs it holds, the stop
signals waiting for it. In memory on the event loop; the store has the durable half (who holds which job).
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from dataclasses import dataclass, field


@dataclass(eq=False)
class WorkerSession:
    id: str
    secret: bytes = field(default_factory=lambda: secrets.token_urlsafe(24).encode())
    held: set[str] = field(default_factory=set)  # jobs taken and not reported
    stopping: dict[str, float] = field(default_factory=dict)  # job id -> when it was told to stop
    stops: list[str] = field(default_factory=list)  # stop signals not fetched yet through job-stop
    misses: dict[str, int] = field(default_factory=dict)  # stopped job -> pings in a row that left it out
    stop_wake: asyncio.Event = field(default_factory=asyncio.Event)
    retiring: str = ""  # why it gets no more jobs and is stopped once idle (stopPod, a job it would not let go)
    contacted: bool = False
    last_seen: float = 0.0  # service clock of its latest request (0: none yet)
    created: float = 0.0
    gone: bool = False

    def allows(self, authorization: str | None) -> bool:
        """The SDK sends RUNPOD_AI_API_KEY raw; only this worker's own secret opens its routes."""
        return authorization is not None and hmac.compare_digest(authorization.strip().encode(), self.secret)

    @property
    def busy(self) -> int:
        """Jobs it may still be running: held ones and stopped ones it has not let go of yet."""
        return len(self.held) + len(self.stopping)

    def signal_stop(self, job_id: str, now: float) -> None:
        self.held.discard(job_id)
        self.stopping[job_id] = now
        self.stops.append(job_id)
        self.stop_wake.set()

    def let_go(self, job_id: str) -> None:
        self.held.discard(job_id)
        self.stopping.pop(job_id, None)
        self.misses.pop(job_id, None)

    def take_stops(self) -> list[str]:
        stops, self.stops = self.stops, []
        self.stop_wake.clear()
        return stops
