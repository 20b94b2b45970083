"""The job store interface: everything the queue service asks of durable storage, and nothing else.

One store holds one endpoint's jobs. Every method that changes a job returns only after the change is
committed, so an answer a client gets (``/run``'s id, a worker's 200) never describes a job that a crash
could lose. Implementations: ``lbproxy.queue.sqlite`` (one process); issue 13 adds PostgreSQL (replicas).
``tests/queue/test_store_contract.py`` is the contract every implementation passes.

Ownership rules live here, not in the callers: a worker's result, chunk or progress only lands on a job
that worker holds right now, and only while the job runs. That is what makes late results harmless and
job-done idempotent (the first terminal result wins).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .answers import JobCounts
from .jobs import Job, JobState, NewJob


class DuplicateJob(Exception):
    """A job with this id exists already."""


@dataclass(frozen=True, slots=True)
class Load:
    """What scaling needs: queued jobs that may drive scaling, the oldest one, jobs running."""

    queued: int
    oldest_created_at: float | None
    in_progress: int


@dataclass(frozen=True, slots=True)
class Expired:
    """A job the TTL removed; ``worker_id`` is set when it was running (that worker must stop it)."""

    id: str
    state: JobState
    worker_id: str | None


class JobStore(Protocol):
    async def open(self) -> None:
        """Create the schema if needed. Called once before anything else."""

    async def close(self) -> None:
        """Finish pending writes and release the storage."""

    async def add(self, job: NewJob, now: float, on_committed: Callable[[Job], None] | None = None) -> Job:
        """Store a new job IN_QUEUE, durably on return. Raises DuplicateJob. ``on_committed(job)`` runs on the
        loop once the job can be claimed, which may be before it is on disk (and before this returns): a
        waiting worker need not wait for the fsync, since a job lost to a crash then was never acknowledged."""
        ...

    async def get(self, job_id: str) -> Job | None: ...

    async def claim(self, worker_id: str, n: int, now: float, lease: float) -> list[Job]:
        """Give up to ``n`` queued jobs to ``worker_id``: normal before low priority, oldest first. Each is
        IN_PROGRESS with ``lease_until = now + lease``, its attempt counted and its deadline set."""
        ...

    async def renew(self, worker_id: str, job_ids: list[str], until: float) -> int:
        """Extend the leases of the listed jobs that ``worker_id`` holds; returns how many."""
        ...

    async def progress(self, job_id: str, worker_id: str, output: str | None) -> bool:
        """A running job's progress output (shown by /status). False unless the worker holds it."""
        ...

    async def complete(self, job_id: str, worker_id: str, state: JobState, output: str | None,
                       error: str | None, now: float) -> Job | None:
        """A worker's final result (COMPLETED or FAILED). None, and nothing changed, when the job is not
        running on that worker any more (finished, cancelled, timed out, requeued, expired)."""
        ...

    async def stop(self, job_id: str, state: JobState, error: str | None, now: float) -> Job | None:
        """End a queued or running job on lbproxy's side (CANCELLED, TIMED_OUT). The returned job still
        names the worker that held it, which must be told to stop. None when it had already finished."""
        ...

    async def add_chunk(self, job_id: str, worker_id: str, chunk: str) -> bool:
        """A stream chunk of a job the worker holds and that still runs."""
        ...

    async def take_chunks(self, job_id: str) -> tuple[Job, list[str]] | None:
        """The chunks not returned before, oldest first, removed as they are returned."""
        ...

    async def retry(self, job_id: str, now: float) -> Job | None:
        """A FAILED or TIMED_OUT job back to the queue under the same id, its result cleared and its TTL
        counted afresh. None when the job is in another state (or gone)."""
        ...

    async def purge_queue(self) -> int:
        """Remove every queued job (running ones go on); how many were removed."""
        ...

    async def release_worker(self, worker_id: str, now: float, max_attempts: int) -> list[Job]:
        """Jobs of a worker that is gone: requeued, or FAILED ``worker lost`` after ``max_attempts``."""
        ...

    async def expire_leases(self, now: float, max_attempts: int) -> list[Job]:
        """Running jobs whose lease ran out, handled as in ``release_worker``."""
        ...

    async def release_all(self, now: float, max_attempts: int) -> list[Job]:
        """At start: no worker of an earlier process can report any more, so every running job is lost."""
        ...

    async def time_out(self, now: float) -> list[Job]:
        """Running jobs past their deadline become TIMED_OUT; returned so their workers get a stop."""
        ...

    async def expire(self, now: float) -> list[Expired]:
        """Delete jobs past their TTL, in any state (Runpod: a hard limit, then /status is 404)."""
        ...

    async def purge_results(self, now: float) -> int:
        """Delete finished jobs whose retention is over; how many."""
        ...

    async def load(self) -> Load: ...

    async def counts(self) -> JobCounts: ...

    async def held_by(self, worker_id: str) -> list[str]:
        """Ids of the jobs running on ``worker_id``."""
        ...
