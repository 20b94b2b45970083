"""Jobs: their states, the one record every store returns, and the time rules (pure: values and a clock).

Times are wall-clock seconds (``time.time()``), because jobs outlive the process: a job accepted before a
restart keeps its TTL and its delay afterwards. Deadlines are computed once, when a job changes state, and
stored with it, so a store's sweeps are plain comparisons (``expires_at <= now``) on an index.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobState(StrEnum):
    """Runpod's job states (docs: job-states). ``IN_PROGRESS`` is what every SDK reads for a running job."""

    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"


TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT})
RETRYABLE = frozenset({JobState.FAILED, JobState.TIMED_OUT})  # /retry/{id}: only these (Runpod)

WORKER_LOST = "worker lost"
TIMED_OUT_ERROR = "execution timeout exceeded"


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated submission, ready to be stored. ``payload`` is the JSON object text a worker receives,
    without its ``id`` (``input`` and, when given, ``s3Config``, ``webhook``, ``policy``)."""

    id: str
    payload: str
    webhook: str | None
    low_priority: bool
    ttl: float  # seconds from submission; then the job is gone, in any state
    execution_timeout: float | None  # seconds from start; None: no limit
    sync: bool  # /runsync: its result is kept queue.sync_retention, not queue.retention


@dataclass(frozen=True, slots=True)
class Job:
    """One job as a store returns it. ``output`` and ``error`` are JSON texts, stored as the worker sent them."""

    id: str
    state: JobState
    payload: str
    webhook: str | None
    low_priority: bool
    sync: bool
    created_at: float
    expires_at: float  # created_at + TTL: the job is deleted then, in any state
    execution_timeout: float | None
    started_at: float | None = None
    deadline_at: float | None = None  # started_at + execution_timeout, while IN_PROGRESS
    finished_at: float | None = None
    purge_at: float | None = None  # finished_at + retention: the result is deleted then
    worker_id: str | None = None
    lease_until: float | None = None
    attempts: int = 0  # times a worker took it
    retries: int = 0  # times it went back to the queue because its worker was lost
    output: str | None = None
    error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


def delay_ms(job: Job, now: float) -> int:
    """Runpod's ``delayTime``: time in the queue, until a worker took it (so far, while queued)."""
    end = job.started_at if job.started_at is not None else (job.finished_at or now)
    return max(0, round((end - job.created_at) * 1000))


def execution_ms(job: Job, now: float) -> int:
    """Runpod's ``executionTime``: time from a worker taking it to the result (so far, while running)."""
    if job.started_at is None:
        return 0
    end = job.finished_at if job.finished_at is not None else now
    return max(0, round((end - job.started_at) * 1000))


def deadline(started_at: float, execution_timeout: float | None) -> float | None:
    """When a job taken at ``started_at`` times out; None without a limit."""
    return None if execution_timeout is None else started_at + execution_timeout


def after_worker_lost(attempts: int, max_attempts: int) -> JobState:
    """A job whose worker died or stopped renewing its lease: back to the queue, until it has been taken
    ``max_attempts`` times; then FAILED with ``worker lost`` (at-least-once, bounded)."""
    return JobState.IN_QUEUE if attempts < max_attempts else JobState.FAILED
