"""What a client may submit to ``/run`` and ``/runsync`` (Runpod's request body), checked before storing.

Pure: bytes in, a NewJob or a sentence saying what is wrong out. Runpod's body is
``{"input": ..., "webhook"?, "policy"?: {"executionTimeout"?, "ttl"?, "lowPriority"?}, "s3Config"?}``;
``policy`` times are milliseconds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from urllib.parse import urlsplit

from .jobs import NewJob

MIN_EXECUTION_TIMEOUT_MS = 5_000  # Runpod's documented bounds (docs: endpoint-configurations)
MAX_EXECUTION_TIMEOUT_MS = 7 * 86_400_000
MIN_TTL_MS = 10_000
MAX_TTL_MS = 7 * 86_400_000
RUNSYNC_DEFAULT_WAIT_MS = 90_000
RUNSYNC_MIN_WAIT_MS = 1_000
RUNSYNC_MAX_WAIT_MS = 300_000


class BadSubmission(ValueError):
    """The body cannot become a job; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class Defaults:
    """The endpoint's settings a submission falls back to."""

    ttl: float  # timeouts.ttl, seconds
    execution_timeout: float | None  # timeouts.execution, seconds; None = off


def parse_submission(body: bytes, job_id: str, defaults: Defaults, sync: bool) -> NewJob:
    """Validate a ``/run`` or ``/runsync`` body. Raises BadSubmission."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadSubmission("the body must be a JSON object like {\"input\": {...}}") from None
    if not isinstance(data, dict):
        raise BadSubmission("the body must be a JSON object like {\"input\": {...}}")
    if "input" not in data:
        raise BadSubmission("input: required (the value handed to the worker's handler as job[\"input\"])")
    webhook = data.get("webhook")
    if webhook is not None:
        parts = urlsplit(webhook) if isinstance(webhook, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise BadSubmission("webhook: must be an http:// or https:// URL")
    policy = data.get("policy")
    if policy is None:
        policy = {}
    if not isinstance(policy, dict):
        raise BadSubmission("policy: must be an object")
    unknown = sorted(set(policy) - {"executionTimeout", "ttl", "lowPriority"})
    if unknown:
        raise BadSubmission(f"policy.{unknown[0]}: unknown (use executionTimeout, ttl, lowPriority)")
    timeout = defaults.execution_timeout
    if "executionTimeout" in policy:
        timeout = _ms(policy["executionTimeout"], "policy.executionTimeout",
                      MIN_EXECUTION_TIMEOUT_MS, MAX_EXECUTION_TIMEOUT_MS)
    ttl = defaults.ttl
    if "ttl" in policy:
        ttl = _ms(policy["ttl"], "policy.ttl", MIN_TTL_MS, MAX_TTL_MS)
    low = policy.get("lowPriority", False)
    if not isinstance(low, bool):
        raise BadSubmission("policy.lowPriority: must be true or false")
    s3 = data.get("s3Config")
    if s3 is not None and not isinstance(s3, dict):
        raise BadSubmission("s3Config: must be an object (accessId, accessSecret, bucketName, endpointUrl)")
    # What the worker's handler sees (Runpod hands over these keys at the top level of the job).
    payload = {"input": data["input"]}
    for key in ("s3Config", "webhook", "policy"):
        if data.get(key) is not None:
            payload[key] = data[key]
    return NewJob(job_id, json.dumps(payload, separators=(",", ":")), webhook, low, ttl, timeout, sync)


def _ms(value: object, field: str, low: int, high: int) -> float:
    """A milliseconds value in [low, high], as seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadSubmission(f"{field}: must be a number of milliseconds")
    if not low <= value <= high:
        raise BadSubmission(f"{field}: must be between {low} and {high} milliseconds (got {value:g})")
    return float(value) / 1000


def runsync_wait(query_value: str | None) -> float:
    """``/runsync?wait=ms``: how long to hold the request for the result, seconds (default 90 s, as Runpod)."""
    if query_value is None or query_value == "":
        return RUNSYNC_DEFAULT_WAIT_MS / 1000
    try:
        wait = int(query_value)
    except ValueError:
        raise BadSubmission("wait: must be a whole number of milliseconds") from None
    if not RUNSYNC_MIN_WAIT_MS <= wait <= RUNSYNC_MAX_WAIT_MS:
        raise BadSubmission(f"wait: must be between {RUNSYNC_MIN_WAIT_MS} and {RUNSYNC_MAX_WAIT_MS} milliseconds")
    return wait / 1000
