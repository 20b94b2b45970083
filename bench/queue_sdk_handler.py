"""An unchanged runpod SDK async handler for bench/queue_jobs.py (run from the SDK's own venv): it only records
when it started, so the figures show the SDK's own dispatch overhead on top of lbproxy's."""

import os
import time

import runpod

if os.environ.get("BENCH_CPUS"):
    os.sched_setaffinity(0, {int(c) for c in os.environ["BENCH_CPUS"].split(",")})
CONCURRENCY = int(os.environ.get("BENCH_BATCH", "32"))


async def handler(job):
    return {"received": time.monotonic()}


runpod.serverless.start({"handler": handler, "concurrency_modifier": lambda current: CONCURRENCY})
