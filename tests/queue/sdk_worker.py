"""Test workers: unchanged ``runpod`` SDK handlers, one per ``HANDLER`` kind, run from the SDK's own venv.

Input keys (all optional): sleep (seconds), progress (a value for progress_update), fail (raise), error
(return {"error": ...}), exit (os._exit(1) mid-job: a crash), size (return that many bytes of text),
marker (a file to write "cancelled" to when an async job is stopped).
"""

import asyncio
import os
import time
from pathlib import Path

import runpod

KIND = os.environ.get("HANDLER", "sync")


def _facts(job):
    return {"echo": job["input"], "keys": sorted(job), "s3Config": job.get("s3Config"), "pid": os.getpid(),
            "worker": os.environ.get("RUNPOD_POD_ID"),
            "skip_checks": os.environ.get("RUNPOD_SKIP_AUTO_SYSTEM_CHECKS"),
            "ping_interval": os.environ.get("RUNPOD_PING_INTERVAL")}


def sync_handler(job):
    data = job["input"] if isinstance(job["input"], dict) else {}
    if "progress" in data:
        runpod.serverless.progress_update(job, data["progress"])
    if data.get("exit"):
        os._exit(1)
    time.sleep(float(data.get("sleep", 0)))
    if data.get("fail"):
        raise RuntimeError("the handler failed on purpose")
    if "error" in data:
        return {"error": data["error"]}
    if "size" in data:
        return "x" * int(data["size"])
    return _facts(job)


def generator_handler(job):
    for i in range(int(job["input"].get("n", 3))):
        time.sleep(float(job["input"].get("interval", 0)))
        yield {"chunk": i}


async def async_handler(job):
    data = job["input"]
    started = time.time()
    try:
        await asyncio.sleep(float(data.get("sleep", 0)))
    except asyncio.CancelledError:
        if data.get("marker"):
            Path(data["marker"]).write_text("cancelled")
        raise
    return {**_facts(job), "started": started, "ended": time.time()}


def refresh_handler(job):
    return {**_facts(job), "refresh_worker": True}


if KIND == "sync":
    runpod.serverless.start({"handler": sync_handler})
elif KIND == "generator":
    runpod.serverless.start({"handler": generator_handler, "return_aggregate_stream": True})
elif KIND == "async":
    concurrency = int(os.environ.get("CONCURRENCY", "3"))
    runpod.serverless.start({"handler": async_handler, "concurrency_modifier": lambda current: concurrency})
elif KIND == "refresh":
    runpod.serverless.start({"handler": refresh_handler})
else:
    raise SystemExit(f"unknown HANDLER {KIND}")
