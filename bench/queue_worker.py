"""A lean queue worker for bench/queue_jobs.py: the runpod SDK's worker protocol (batch job-take, job-done, ping)
in a few lines of aiohttp, without the SDK's 0.1 s internal loop, so the figures are lbproxy's own.

Started by lbproxy with the SDK's environment; BENCH_CPUS pins it (the load stays off lbproxy's core).
Each job's output is ``{"received": time.monotonic()}`` (CLOCK_MONOTONIC is shared by every process on the
machine, so the load generator can subtract its own send time).
"""

import asyncio
import os
import time

import aiohttp

if os.environ.get("BENCH_CPUS"):
    os.sched_setaffinity(0, {int(c) for c in os.environ["BENCH_CPUS"].split(",")})

TAKE = os.environ["RUNPOD_WEBHOOK_GET_JOB"]
DONE = os.environ["RUNPOD_WEBHOOK_POST_OUTPUT"]
PING = os.environ["RUNPOD_WEBHOOK_PING"]
BATCH = int(os.environ.get("BENCH_BATCH", "32"))
HEADERS = {"Authorization": os.environ["RUNPOD_AI_API_KEY"]}


async def finish(session: aiohttp.ClientSession, job: dict, received: float) -> None:
    body = b'{"output": {"received": %r}}' % received
    async with session.post(DONE.replace("$ID", job["id"]) + "&isStream=false", data=body) as r:
        await r.read()


async def pings(session: aiohttp.ClientSession) -> None:
    while True:
        async with session.get(PING, params={"runpod_version": "bench"}) as r:
            await r.read()
        await asyncio.sleep(1)


async def main() -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(headers=HEADERS, connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=120)) as session:
        ping = asyncio.create_task(pings(session))  # referenced until the worker is stopped
        url = TAKE.replace("/job-take/", "/job-take-batch/") + f"&batch_size={BATCH}&job_in_progress=0"
        running: set[asyncio.Task[None]] = set()
        while True:
            async with session.get(url) as r:
                if r.status != 200:
                    await r.read()
                    continue
                jobs = await r.json()
            received = time.monotonic()  # "the handler starts"
            for job in jobs:
                task = asyncio.create_task(finish(session, job, received))
                running.add(task)
                task.add_done_callback(running.discard)
        ping.cancel()


if __name__ == "__main__":
    asyncio.run(main())
