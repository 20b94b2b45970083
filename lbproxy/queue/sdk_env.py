"""The environment an unchanged ``runpod`` SDK worker needs to pull jobs from lbproxy (pure).

Traps (runpod-protocol 0): in the job-take URL ``$ID`` means the worker id, in job-done and job-stream
``$ID`` means the job id, and the SDK appends ``&...`` to every URL, so each needs a ``?``. lbproxy starts
each worker itself, so it writes the real worker id into every URL and leaves only the job id's ``$ID``.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import quote

SKIP_CHECKS = "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"


def worker_env(base: str, endpoint: str, worker_id: str, secret: str, ping_interval: float,
               overrides: Mapping[str, str]) -> dict[str, str]:
    """``base`` is the worker API's URL (``http://127.0.0.1:PORT``); ``overrides`` is ``worker.env``, which
    wins over everything but the URLs and the secret (a worker must not reach another worker's jobs)."""
    prefix = f"{base}/v2/{quote(endpoint)}"
    wid = quote(worker_id)
    env = {
        # The SDK's fitness check opens a TCP connection to 8.8.8.8:53 and exits when it fails: never wanted
        # in an air-gapped cluster or a test. A user can turn it back on through worker.env.
        SKIP_CHECKS: "true",
        "RUNPOD_ENDPOINT_ID": endpoint,
        **overrides,
        "RUNPOD_WEBHOOK_GET_JOB": f"{prefix}/job-take/{wid}?",
        "RUNPOD_WEBHOOK_POST_OUTPUT": f"{prefix}/job-done/{wid}/$ID?",
        "RUNPOD_WEBHOOK_POST_STREAM": f"{prefix}/job-stream/{wid}/$ID?",
        "RUNPOD_WEBHOOK_PING": f"{prefix}/ping/{wid}",
        "RUNPOD_POD_ID": worker_id,
        "RUNPOD_AI_API_KEY": secret,
        # Milliseconds, integer-divided by 1000 by the SDK: under 1000 it pings in a hot loop.
        "RUNPOD_PING_INTERVAL": str(max(1, round(ping_interval)) * 1000),
    }
    return env
