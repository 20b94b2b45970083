"""The JSON shapes of the client API's answers, as the Runpod SDK reads them (pure).

Every answer carries ``status``: the async SDK client reads ``(await resp.json())["status"]`` without
checking the HTTP code, so an error without it would surface as a KeyError in the user's code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .jobs import Job, JobState, delay_ms, execution_ms


def status_body(job: Job, now: float) -> dict[str, Any]:
    """``/status/{id}`` (and the webhook, and a finished ``/runsync``)."""
    body: dict[str, Any] = {"id": job.id, "status": job.state.value, "delayTime": delay_ms(job, now)}
    if job.started_at is not None:
        body["executionTime"] = execution_ms(job, now)
    if job.output is not None:
        body["output"] = json.loads(job.output)
    if job.error is not None:
        body["error"] = json.loads(job.error)
    if job.worker_id is not None:
        body["workerId"] = job.worker_id
    if job.retries:
        body["retries"] = job.retries
    return body


def accepted_body(job_id: str, state: JobState = JobState.IN_QUEUE) -> dict[str, Any]:
    """``/run``, ``/retry`` and an unfinished ``/runsync``."""
    return {"id": job_id, "status": state.value}


def stream_body(state: JobState, chunks: list[str]) -> dict[str, Any]:
    """``/stream/{id}``: the chunks not returned before, each as ``{"output": chunk}``."""
    return {"status": state.value, "stream": [{"output": json.loads(c)} for c in chunks]}


@dataclass(frozen=True, slots=True)
class JobCounts:
    """Jobs of one endpoint by what ``/health`` shows (finished ones while their results are kept)."""

    in_queue: int = 0
    in_progress: int = 0
    completed: int = 0
    failed: int = 0  # FAILED and TIMED_OUT
    retried: int = 0  # jobs that went back to the queue at least once because their worker was lost
    in_queue_for_scaling: int = 0  # in_queue without the low-priority ones
    oldest_for_scaling: float | None = None  # created_at of the oldest such job


@dataclass(frozen=True, slots=True)
class WorkerCounts:
    idle: int = 0  # ready, holding no job
    running: int = 0  # holding at least one job
    initializing: int = 0  # started, not in touch yet
    unhealthy: int = 0


def health_body(jobs: JobCounts, workers: WorkerCounts) -> dict[str, Any]:
    """``/health``: Runpod's keys, plus worker states it does not document (extra keys are safe)."""
    return {
        "jobs": {"completed": jobs.completed, "failed": jobs.failed, "inProgress": jobs.in_progress,
                 "inQueue": jobs.in_queue, "retried": jobs.retried},
        "workers": {"idle": workers.idle, "running": workers.running, "initializing": workers.initializing,
                    "unhealthy": workers.unhealthy},
        "status": "OK",
    }


def error_body(code: str, message: str, status: str) -> dict[str, Any]:
    """lbproxy's error shape (``error``, ``message``) with the ``status`` the SDK reads."""
    return {"error": code, "message": message, "status": status}
