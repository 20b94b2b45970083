"""``queue.delivery: http``: jobs pushed to plain HTTP workers, so any load-balancer worker serves a queue.

Each job is POSTed as ``{"id", "input"}`` to ``worker.job_path`` on a ready worker with a free slot (the
pool's routing and ``workers.concurrency``). A JSON answer is the output; an ``application/x-ndjson`` or
``text/event-stream`` answer is read line by line into stream chunks; any other 2xx body is the output as
text; a non-2xx answer is FAILED with the reason; a broken connection requeues the job (its lease lapses).
Cancel and timeout close the connection, which is how a plain HTTP server learns that its client went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import aiohttp

from ..config import Config
from ..policy import WorkerState
from ..pool import NoWorkerInTime, ShuttingDown, Slot, Worker, WorkerPool
from .jobs import Job, JobState
from .service import QueueService

log = logging.getLogger("lbproxy.queue.http")

_STREAMED = ("application/x-ndjson", "text/event-stream")


class HttpDelivery:
    def __init__(self, config: Config, service: QueueService, pool: WorkerPool) -> None:
        self.service = service
        self.pool = pool
        self.path = config.worker.job_path
        self.result_limit = config.queue.max_result_size
        self._session: aiohttp.ClientSession | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None
        self._worker_ready = asyncio.Event()
        service.on_stop(self._stop)
        pool.on_state_change(self._state_changed)

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The dispatch loop: it never returns while lbproxy runs (the endpoint stops if it does)."""
        return self._loop

    def _state_changed(self, w: Worker, old: WorkerState) -> None:
        if w.state is WorkerState.READY:
            self._worker_ready.set()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                              connector=aiohttp.TCPConnector(limit=0))
        self._loop = asyncio.create_task(self._dispatch_forever(), name="queue http delivery")

    async def close(self) -> None:
        tasks = [t for t in (self._loop, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _stop(self, worker_id: str, job_id: str) -> None:
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()

    async def _dispatch_forever(self) -> None:
        """Take a free worker slot, then a job for it; with no job, give the slot back and wait for one."""
        service = self.service
        while True:
            event, seen = service.work_event()
            try:
                slot = await self.pool.reserve()
            except NoWorkerInTime:
                # None within timeouts.wait (try again), or none at all while workers fail to start: the pool
                # then refuses at once, so wait for a worker to be ready instead of asking again in a busy loop.
                self._worker_ready.clear()
                if not self.pool.ready:
                    await self._worker_ready.wait()
                continue
            except ShuttingDown:
                return
            try:
                jobs = await service.store.claim(slot.worker.id, 1, service.clock(), service.lease)
            except BaseException:
                slot.release()
                raise
            if not jobs:
                slot.release()
                if service.work_seen(seen):
                    await event.wait()
                continue
            job = jobs[0]
            task = asyncio.create_task(self._deliver(job, slot))
            self._running[job.id] = task

    async def _deliver(self, job: Job, slot: Slot) -> None:
        assert self._session is not None
        w = slot.worker
        service = self.service
        body = b'{"id":' + json.dumps(job.id).encode() + b"," + job.payload.encode()[1:]
        url = f"http://{w.authority}{self.path}"
        state, output, error = JobState.FAILED, None, None
        blame = False  # the worker failed the request (the pool counts those for its exit log)
        renew = asyncio.create_task(self._renew(job, w))
        try:
            async with self._session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                kind = resp.content_type
                if resp.status >= 300:
                    blame = resp.status >= 500
                    text = (await resp.content.read(2048)).decode("utf-8", "replace")
                    error = json.dumps(f"the worker answered {resp.status}: {text}")
                elif kind in _STREAMED:
                    error = await self._read_stream(resp, job, w)
                    state = JobState.COMPLETED if error is None else JobState.FAILED
                else:
                    data = await resp.content.read(self.result_limit + 1)
                    if len(data) > self.result_limit:
                        error = json.dumps(f"the worker's answer is over queue.max_result_size ({self.result_limit})")
                    else:
                        state, output = JobState.COMPLETED, _output(data, kind)
        except (aiohttp.ClientError, OSError) as exc:
            # The worker went away (crashed, restarted, closed the connection): infrastructure, not the job's
            # fault. Its lease is no longer renewed, so the job is requeued when it lapses (or at once when the
            # worker's process exits), as with an SDK worker.
            log.warning("job %s: worker %s failed mid-job (%s); the job goes back to the queue",
                        job.id, w.id, exc or type(exc).__name__)
            blame = True
            return
        except asyncio.CancelledError:
            return  # cancelled or timed out: the store has the final state already
        finally:
            renew.cancel()
            self._running.pop(job.id, None)
            slot.release(failed=blame)
        await service.finish(job.id, w.id, state, output, error)

    async def _read_stream(self, resp: aiohttp.ClientResponse, job: Job, w: Worker) -> str | None:
        """Each line of the answer a stream chunk, as it arrives; None, or why the job failed: a line over
        queue.max_result_size (aiohttp's own line reader stops at 128 KiB, far below what a result may be)."""
        limit = self.result_limit
        too_long = json.dumps(f"a streamed line of the worker's answer is over queue.max_result_size ({limit})")
        pending = bytearray()  # the line begun and not ended yet
        async for data in resp.content.iter_any():
            *ended, rest = data.split(b"\n")
            if ended:
                ended[0] = bytes(pending) + ended[0]
                pending = bytearray()
            for line in ended:
                if len(line) > limit:
                    return too_long
                chunk = _chunk(line)
                if chunk is not None:
                    await self.service.store.add_chunk(job.id, w.id, chunk)
            pending += rest
            if len(pending) > limit:
                return too_long
        chunk = _chunk(bytes(pending)) if pending else None
        if chunk is not None:
            await self.service.store.add_chunk(job.id, w.id, chunk)
        return None

    async def _renew(self, job: Job, w: Worker) -> None:
        """The lease of a pushed job is renewed while its connection is open (lbproxy is the worker's client)."""
        while True:
            await asyncio.sleep(self.service.lease / 3)
            with contextlib.suppress(Exception):
                await self.service.store.renew(w.id, [job.id], self.service.clock() + self.service.lease)


def _output(data: bytes, content_type: str) -> str:
    if content_type == "application/json":
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            return json.dumps(json.loads(data))
    return json.dumps(data.decode("utf-8", "replace"))


def _chunk(line: bytes) -> str | None:
    """One NDJSON line or SSE ``data:`` line as a chunk (JSON if it parses, else text); others are skipped."""
    text = line.decode("utf-8", "replace").strip()
    if text.startswith("data:"):
        text = text[5:].strip()
    elif text.startswith(("event:", "id:", "retry:", ":")):
        return None
    if not text or text == "[DONE]":
        return None
    try:
        return json.dumps(json.loads(text))
    except ValueError:
        return json.dumps(text)
