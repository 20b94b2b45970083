"""What an SDK worker posts to job-done and job-stream, read into one of three outcomes (pure).

The worker sends ``json.dumps(result)`` labelled ``application/x-www-form-urlencoded``
(runpod-protocol 0.5): the raw body is JSON whatever the header says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum


class Outcome(Enum):
    PROGRESS = "progress"  # progress_update(): shown by /status while the job runs
    COMPLETED = "completed"
    FAILED = "failed"  # the handler raised or returned an "error"


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    output: str | None  # JSON text
    error: str | None  # JSON text (the SDK sends a string that itself holds JSON)
    stop_worker: bool  # "stopPod": refresh_worker asked for a fresh worker


def _text(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))


def read_result(body: bytes) -> Result:
    """A job-done body. A body that is not JSON is the worker's fault: the job FAILED, with a reason."""
    try:
        data = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError):
        return Result(Outcome.FAILED, None, _text("the worker sent a result that is not JSON"), False)
    if not isinstance(data, dict):
        return Result(Outcome.COMPLETED, _text(data), None, False)
    stop = data.get("stopPod") is True
    output = _text(data["output"]) if "output" in data else None
    if data.get("status") == "IN_PROGRESS":
        return Result(Outcome.PROGRESS, output, None, stop)
    if data.get("error") is not None:
        return Result(Outcome.FAILED, output, _text(data["error"]), stop)
    return Result(Outcome.COMPLETED, output, None, stop)


def read_chunk(body: bytes) -> str | None:
    """A job-stream body ``{"output": chunk}``: the chunk as JSON text, or None when it is not one."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or "output" not in data:
        return None
    return _text(data["output"])
