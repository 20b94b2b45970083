"""The queue service on the event loop: jobs in, jobs out to workers, results back, and the sweeper.

Long polls (job-take, job-stop, /runsync) wait on in-process events, so a job reaches a waiting worker as
soon as it is committed. Leases are renewed by pings; the sweeper times jobs out, requeues lost ones,
expires TTLs and deletes old results. Everything durable goes through the store; what is here in memory
(who waits, which stop signals are pending) is rebuilt from nothing after a restart, when every job that was
running is requeued (its worker belonged to the process that died).

A shared store (PostgreSQL, several replicas) reports the other replicas' changes through the StoreEvents
methods below, so a job submitted to one replica wakes a worker polling another, and a cancel on one stops
the job where it runs. While that channel is down, long polls look at the store every ``FALLBACK_POLL``
seconds instead. At start, a shared store's running jobs are left alone (other replicas' workers run them):
those of this replica's dead workers come back when their leases lapse.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ..config import Config
from ..policy import Snapshot, WorkerState
from ..pool import Worker, WorkerPool
from .answers import JobCounts, WorkerCounts, status_body
from .jobs import Job, JobState, NewJob
from .results import Outcome, read_chunk, read_result
from .sessions import WorkerSession
from .store import JobStore, Load, StoreUnavailable
from .submissions import Defaults
from .webhooks import Webhooks

log = logging.getLogger("lbproxy.queue")

SWEEP_INTERVAL = 0.5
LEAVING_HOLD = 0.25
FALLBACK_POLL = 1.0  # how often long polls look at a shared store while its notifications are down
_LEAVING = (WorkerState.DRAINING, WorkerState.STOPPING, WorkerState.EXITED)
_LIVE = (WorkerState.STARTING, WorkerState.READY)


def new_job_id(sync: bool) -> str:
    """Opaque ids; Runpod's look like ``<uuid>-u1`` and ``sync-<uuid>`` (random, like uuid4, but formatted
    without building a UUID object: this runs once per job on the event loop)."""
    h = os.urandom(16).hex()
    text = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"
    return f"sync-{text}" if sync else f"{text}-u1"


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


class QueueService:
    def __init__(
        self,
        config: Config,
        store: JobStore,
        pool: WorkerPool,
        retire: Callable[[str, str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``retire(worker_id, why)`` stops a worker for good (the controller starts others as needed)."""
        q = config.queue
        self.config = config
        self.store = store
        self.pool = pool
        self.retire = retire
        self.clock = clock
        self.defaults = Defaults(config.timeouts.ttl, config.timeouts.execution)
        self.max_attempts = q.max_attempts
        self.lease = q.lease
        self.hold = q.take_hold
        self.stop_grace = q.stop_grace
        self.per_worker = config.workers.concurrency  # 0: as many as the worker asks for
        self.sessions: dict[str, WorkerSession] = {}
        # Kubernetes: the key every worker pod has (one Secret for a Deployment's identical pods); a pod is
        # told apart by its IP, which the pod watch knows (pod_session).
        self.pod_key: bytes | None = None
        self.webhooks = Webhooks(q.webhook_retries, q.webhook_retry_delay)
        self._work = asyncio.Event()  # replaced whole after each set: waiters hold the one they saw
        self._added = 0  # jobs made available (added, requeued, retried): lost-wakeup guard for polls
        self._finished: dict[str, list[asyncio.Future[Job | None]]] = {}
        self._stop_hooks: list[Callable[[str, str], None]] = []  # (worker id, job id): http delivery
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.store_down: str | None = None  # why the store is unreachable now (logged once per outage)
        self.last_load = Load(0, None, 0)  # as of the controller's latest tick, for /status and /metrics
        pool.on_state_change(self._worker_state)
        store.listen(self)

    def reload(self, config: Config) -> None:
        """SIGHUP's live settings here: new jobs take the new timeouts (a job keeps those it was submitted
        with), job takes the new per-worker concurrency."""
        self.config = config
        self.defaults = Defaults(config.timeouts.ttl, config.timeouts.execution)
        self.per_worker = config.workers.concurrency

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.open()
        if not self.store.shared:
            lost = await self.store.release_all(self.clock(), self.max_attempts)
            if lost:
                log.warning("%d job(s) were running when lbproxy last stopped: requeued (or failed after "
                            "queue.max_attempts)", len(lost))
            self._settled(lost)
        await self.webhooks.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="queue sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for waiters in self._finished.values():
            for fut in waiters:
                if not fut.done():
                    fut.cancel()
        await self.webhooks.close()
        await self.store.close()

    @property
    def sweeper(self) -> asyncio.Task[None] | None:
        return self._sweeper

    def on_stop(self, hook: Callable[[str, str], None]) -> None:
        self._stop_hooks.append(hook)

    # -- clients -----------------------------------------------------------------------------------

    async def submit(self, job: NewJob) -> Job:
        return await self.store.add(job, self.clock(), on_committed=lambda _: self._available())

    async def wait_finished(self, job_id: str, wait: float) -> Job | None:
        """The job once terminal, or as it is after ``wait`` seconds; None when it is gone (TTL)."""
        fut: asyncio.Future[Job | None] = asyncio.get_running_loop().create_future()
        self._finished.setdefault(job_id, []).append(fut)
        try:
            job = await self.store.get(job_id)  # after registering: a result that lands now is not missed
            if job is None or job.terminal:
                return job
            loop = asyncio.get_running_loop()
            until = loop.time() + wait
            while (left := until - loop.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left if self.store.listening else min(left, FALLBACK_POLL)):
                        return await fut
                if not self.store.listening:  # another replica may have finished it unheard
                    job = await self.store.get(job_id)
                    if job is None or job.terminal:
                        return job
            return await self.store.get(job_id)
        finally:
            waiters = self._finished.get(job_id)
            if waiters is not None:
                with contextlib.suppress(ValueError):
                    waiters.remove(fut)
                if not waiters:
                    del self._finished[job_id]

    async def cancel(self, job_id: str) -> Job | None:
        """CANCELLED at once; a running job's worker is told to stop (and replaced if it does not)."""
        job = await self.store.stop(job_id, JobState.CANCELLED, None, self.clock())
        if job is None:
            return await self.store.get(job_id)
        self._ended(job)
        return job

    async def retry(self, job_id: str) -> Job | None:
        job = await self.store.retry(job_id, self.clock())
        if job is not None:
            self._available()
        return job

    async def purge_queue(self) -> int:
        return await self.store.purge_queue()

    async def health(self) -> tuple[JobCounts, WorkerCounts]:
        counts = await self.store.counts()
        idle = running = initializing = unhealthy = 0
        for w in self.pool.workers.values():
            if w.state is WorkerState.STARTING:
                initializing += 1
            elif w.state is WorkerState.UNHEALTHY:
                unhealthy += 1
            elif w.in_flight:
                running += 1
            elif w.state is WorkerState.READY:
                idle += 1
        return counts, WorkerCounts(idle, running, initializing, unhealthy)

    async def snapshot(self, blocked_until: float, pending_starts: int) -> Snapshot:
        """The controller's view: the pool's workers with the queue's jobs (low priority left out). With the
        store unreachable, the last load it gave (scaling holds still rather than guessing)."""
        try:
            self.last_load = await self.store.load()
        except StoreUnavailable as exc:
            self.store_trouble(exc)
        load = self.last_load
        snap = self.pool.snapshot(blocked_until, pending_starts)
        oldest = None
        if load.oldest_created_at is not None:
            oldest = snap.now - max(0.0, self.clock() - load.oldest_created_at)  # wall clock -> pool clock
        return dataclasses.replace(snap, queued=load.queued, oldest_queued_at=oldest)

    # -- SDK workers ---------------------------------------------------------------------------------

    def session_for(self, worker_id: str) -> WorkerSession:
        """A new worker's session (its secret goes into its environment before it starts)."""
        session = self.sessions[worker_id] = WorkerSession(worker_id, created=self.clock())
        return session

    async def pod_session(self, worker_id: str, remote: str | None) -> WorkerSession | None:
        """The session of worker pod ``worker_id`` when ``remote`` is its pod IP; made at its first request
        to this replica (any replica may serve any pod), with the jobs the store says it holds."""
        w = self.pool.get(worker_id)
        if self.pod_key is None or w is None or not w.host or w.host != remote:
            return None
        session = self.sessions.get(worker_id)
        if session is None:
            session = self.sessions[worker_id] = WorkerSession(worker_id, secret=self.pod_key, created=self.clock())
            with contextlib.suppress(StoreUnavailable):
                session.held.update(await self.store.held_by(worker_id))
        return session

    def watch(self, w: Worker) -> None:
        """The controller's prober hook: an SDK worker is ready at its first contact, not by /ping."""

    def forget(self, worker_id: str) -> None:
        return None

    def contact(self, session: WorkerSession) -> Worker | None:
        """Any authenticated request from a worker: the first one makes it READY."""
        w = self.pool.get(session.id)
        session.last_seen = self.clock()
        if w is None:
            return None
        if not session.contacted:
            session.contacted = True
            if w.state is WorkerState.STARTING:
                self.pool.set_state(w, WorkerState.READY, "in touch with the worker API")
        elif w.state is WorkerState.UNHEALTHY:
            log.info("worker %s is in touch again", w.id)
            self.pool.set_state(w, WorkerState.READY, "in touch with the worker API again")
        return w

    async def take(self, session: WorkerSession, wanted: int) -> list[Job]:
        """Up to ``wanted`` jobs for the worker, held until one is there or ``take_hold`` passed (an empty
        answer makes the SDK poll again at once, so it must never come early)."""
        loop = asyncio.get_running_loop()
        until = loop.time() + self.hold
        while True:
            w = self.contact(session)
            event = self._work
            seen = self._added
            n = wanted if not self.per_worker else min(wanted, self.per_worker - session.busy)
            if w is None or w.state in _LEAVING or session.retiring or session.gone:
                # A worker on its way out: answer soon (an open poll delays the SDK's exit after SIGTERM),
                # yet not at once (it would poll again in a hot loop until the signal arrives).
                until = min(until, loop.time() + LEAVING_HOLD)
            elif w.state is WorkerState.READY and n > 0:
                # Counted busy before the claim is awaited, so a scale-down decided meanwhile cannot pick it.
                self.pool.set_in_flight(w, session.busy + n)
                try:
                    jobs = await self.store.claim(session.id, n, self.clock(), self.lease)
                except BaseException:  # a claim committed anyway is requeued when its lease runs out
                    self.pool.set_in_flight(w, session.busy)
                    raise
                session.held.update(j.id for j in jobs)
                self.pool.set_in_flight(w, session.busy)
                if jobs:
                    log.debug("worker %s took %s", session.id, [j.id for j in jobs])
                if jobs:
                    return jobs
                if self._added != seen:
                    continue  # a job arrived while we claimed: look again before sleeping
            remaining = until - loop.time()
            if remaining <= 0:
                return []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining if self.store.listening else min(remaining, FALLBACK_POLL)):
                    await event.wait()

    async def stops(self, session: WorkerSession) -> list[str]:
        """job-stop: the jobs the worker must cancel, held like job-take when there are none."""
        self.contact(session)
        if not session.stops:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.hold):
                    await session.stop_wake.wait()
        return session.take_stops()

    async def done(self, session: WorkerSession, job_id: str, body: bytes) -> None:
        """job-done: the first terminal result wins; a late or repeated one is dropped (the worker still
        gets 200, or it would retry it)."""
        self.contact(session)
        result = read_result(body)
        if result.outcome is Outcome.PROGRESS:
            if job_id in session.held:
                await self.store.progress(job_id, session.id, result.output)
            return
        state = JobState.FAILED if result.outcome is Outcome.FAILED else JobState.COMPLETED
        await self.finish(job_id, session.id, state, result.output, result.error)
        session.let_go(job_id)
        self._update_busy(session)
        if result.stop_worker and not session.retiring:
            session.retiring = "the handler asked for a fresh worker (refresh_worker)"
        self._retire_if_idle(session)

    async def fail_oversized(self, session: WorkerSession, job_id: str, limit: int) -> None:
        """A result over queue.max_result_size: the job FAILED with a reason instead of vanishing."""
        error = f'"the worker\'s result is over queue.max_result_size ({limit} bytes)"'
        await self.finish(job_id, session.id, JobState.FAILED, None, error)
        session.let_go(job_id)
        self._update_busy(session)

    async def finish(self, job_id: str, worker_id: str, state: JobState, output: str | None,
                            error: str | None) -> None:
        """A worker's final result; dropped when the job is no longer running on that worker."""
        job = await self.store.complete(job_id, worker_id, state, output, error, self.clock())
        if job is not None:
            self._ended(job)

    async def chunk(self, session: WorkerSession, job_id: str, body: bytes) -> None:
        self.contact(session)
        chunk = read_chunk(body)
        if chunk is not None:
            await self.store.add_chunk(job_id, session.id, chunk)

    async def ping(self, session: WorkerSession, job_ids: list[str]) -> None:
        """Renew the leases of the jobs the worker lists. A stopped job it no longer lists is let go of:
        the SDK's ping process lists exactly the jobs still running in the worker."""
        self.contact(session)
        listed = set(job_ids)
        for job_id in list(session.stopping):
            if job_id not in listed:
                # Missing from two pings: one sent just before the worker recorded the job (a cancel right
                # after the take) may arrive after the stop; a second one, an interval later, cannot.
                session.misses[job_id] = session.misses.get(job_id, 0) + 1
                if session.misses[job_id] >= 2:
                    session.let_go(job_id)
                continue
            session.misses.pop(job_id, None)
            if job_id not in session.stops:
                # Still running: the SDK drops a stop for a job it took but has not started yet, so say it
                # again (stopping an unknown job is a no-op for the SDK) until stop_grace runs out.
                session.stops.append(job_id)
                session.stop_wake.set()
        self._update_busy(session)
        if job_ids:
            await self.store.renew(session.id, job_ids, self.clock() + self.lease)
        self._retire_if_idle(session)

    async def worker_gone(self, worker_id: str) -> None:
        """The worker's process exited: its jobs go back to the queue at once (no lease to wait out)."""
        session = self.sessions.pop(worker_id, None)
        if session is not None:
            session.gone = True
            session.stop_wake.set()
        try:
            lost = await self.store.release_worker(worker_id, self.clock(), self.max_attempts)
        except StoreUnavailable as exc:  # its leases lapse instead: the jobs come back later, not never
            log.warning("worker %s exited; its jobs go back to the queue when their leases lapse (%s)", worker_id, exc)
            return
        if lost:
            log.warning("worker %s exited holding %d job(s): requeued", worker_id, len(lost))
        self._settled(lost)

    # -- StoreEvents: what other replicas did (a shared store) -------------------------------------------

    def jobs_added(self) -> None:
        self._available()

    def stop_job(self, worker_id: str, job_id: str) -> None:
        self._stop_on_worker(worker_id, job_id)

    def job_finished(self, job_id: str) -> None:
        if self._finished.get(job_id):
            self._spawn(self._reread(job_id))

    def missed(self) -> None:
        for job_id in list(self._finished):
            self._spawn(self._reread(job_id))

    async def _reread(self, job_id: str) -> None:
        """A /runsync job another replica finished (or the TTL removed): wake those waiting for it here."""
        try:
            job = await self.store.get(job_id)
        except StoreUnavailable:
            return  # the waiters poll the store while it is away
        if job is None or job.terminal:
            for fut in self._finished.get(job_id, ()):
                if not fut.done():
                    fut.set_result(job)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def store_trouble(self, exc: StoreUnavailable) -> None:
        if self.store_down is None:
            log.error("job store unavailable: %s; /run answers 503 until it is back", exc)
        self.store_down = str(exc)

    def work_event(self) -> tuple[asyncio.Event, int]:
        """For a poll about to look for jobs: the event set when jobs arrive, and a mark to check later."""
        return self._work, self._added

    def work_seen(self, mark: int) -> bool:
        """Whether no job arrived since ``mark``: only then may a poll that found nothing sleep."""
        return self._added == mark

    # -- internals ---------------------------------------------------------------------------------

    def _worker_state(self, w: Worker, old: WorkerState) -> None:
        """A worker starts to leave (drained, stopped): end its open polls now, so that SIGTERM finds the SDK
        with no request open and it exits at once."""
        session = self.sessions.get(w.id)
        if session is not None and w.state in _LEAVING and old not in _LEAVING:
            session.stop_wake.set()
            event, self._work = self._work, asyncio.Event()
            event.set()

    def _available(self) -> None:
        """Jobs were added to the queue: wake every poll, and the controller (scale from zero)."""
        self._added += 1
        event, self._work = self._work, asyncio.Event()
        event.set()
        # The controller ticks every second anyway (queue_delay is seconds); waking it on every job would make
        # it recount the queue as fast as jobs arrive. Only a scale from zero must not wait for the tick.
        if not any(w.state in _LIVE for w in self.pool.workers.values()):
            self.pool.changed.set()

    def _settled(self, jobs: list[Job]) -> None:
        """After requeues or failures of lost workers' jobs."""
        if any(j.state is JobState.IN_QUEUE for j in jobs):
            self._available()
        for job in jobs:
            if job.terminal:
                self._ended(job)

    def _ended(self, job: Job) -> None:
        """A job reached a terminal state: stop it where it runs, wake /runsync, send its webhook."""
        if job.worker_id is not None and job.state in (JobState.CANCELLED, JobState.TIMED_OUT):
            self._stop_on_worker(job.worker_id, job.id)
        for fut in self._finished.get(job.id, ()):
            if not fut.done():
                fut.set_result(job)
        if job.webhook:
            self.webhooks.send(job.webhook, status_body(job, self.clock()))

    def _stop_on_worker(self, worker_id: str, job_id: str) -> None:
        session = self.sessions.get(worker_id)
        log.debug("stop job %s on worker %s (held: %s)", job_id, worker_id,
                  session is not None and job_id in session.held)
        if session is not None and (job_id in session.held or job_id in session.stopping):
            session.signal_stop(job_id, self.clock())
        for hook in self._stop_hooks:
            hook(worker_id, job_id)

    def _update_busy(self, session: WorkerSession) -> None:
        w = self.pool.get(session.id)
        if w is not None:
            self.pool.set_in_flight(w, session.busy)

    def _retire_if_idle(self, session: WorkerSession) -> None:
        if session.retiring and not session.busy and not session.gone:
            session.gone = True
            log.info("replacing worker %s: %s", session.id, session.retiring)
            self.retire(session.id, session.retiring)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except StoreUnavailable as exc:  # one line per outage, not a traceback twice a second
                self.store_trouble(exc)
            except Exception:  # a failing disk must not end the sweeper: log, try again next round
                log.exception("queue sweep failed")
            else:
                if self.store_down is not None:
                    log.info("job store available again")
                    self.store_down = None
            await asyncio.sleep(SWEEP_INTERVAL)

    async def sweep(self) -> None:
        """One round: execution timeouts, lost leases, TTL, retention, and workers that will not let go."""
        now = self.clock()
        for job in await self.store.time_out(now):
            log.info("job %s timed out on worker %s", job.id, job.worker_id)
            self._ended(job)
        lost = await self.store.expire_leases(now, self.max_attempts)
        if lost:
            lapsed = {j.id for j in lost}
            for session in self.sessions.values():
                if session.held & lapsed:
                    session.held -= lapsed
                    self._update_busy(session)
        self._settled(lost)
        for gone in await self.store.expire(now):
            if gone.worker_id is not None:
                self._stop_on_worker(gone.worker_id, gone.id)
            for fut in self._finished.get(gone.id, ()):
                if not fut.done():
                    fut.set_result(None)
        await self.store.purge_results(now)
        for session in list(self.sessions.values()):
            self._check_silence(session, now)
            late = [j for j, at in session.stopping.items() if now - at >= self.stop_grace]
            if late and not session.gone:
                session.retiring = (f"still running job {late[0]} {self.stop_grace:g}s after it was stopped "
                                    f"(a sync handler cannot be interrupted)")
                session.gone = True
                log.warning("replacing worker %s: %s", session.id, session.retiring)
                self.retire(session.id, session.retiring)

    def _check_silence(self, session: WorkerSession, now: float) -> None:
        """A ready worker silent for a whole lease (frozen, cut off) is unhealthy: it gets no jobs, and the
        policy replaces it once it holds none. A session whose process never started is dropped."""
        w = self.pool.get(session.id)
        if w is None:
            if not session.contacted and now - session.created > self.lease:
                del self.sessions[session.id]
            return
        if w.state is WorkerState.READY and session.contacted and now - session.last_seen > self.lease:
            log.warning("worker %s unhealthy: no request for %.0fs (queue.lease)", w.id, now - session.last_seen)
            self.pool.set_state(w, WorkerState.UNHEALTHY, f"silent for more than queue.lease ({self.lease:g}s)")
