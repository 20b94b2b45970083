"""One SQLite connection on one thread, with group commit: many callers, one transaction, one fsync.

Every operation is a function of the connection. The writer thread takes all operations waiting at that
moment, runs each inside a savepoint of one transaction (so one failing operation does not undo the others)
and commits once. Commits do not wait for the disk (``synchronous=NORMAL``); a second thread then fsyncs
the WAL (what ``synchronous=FULL`` would do inside the commit) and only after that answers the callers that
asked for durability. So a durable ``/run`` still waits for its fsync, but the fsync is paid per group of
jobs, and the writer meanwhile goes on: a worker waiting for jobs gets one while it is being synced (if
lbproxy died before the sync, its client never got the job's id, and the worker's result finds no job).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("lbproxy.queue.sqlite")

T = TypeVar("T")
Outcome = tuple[asyncio.Future[Any], bool, Any]

SWITCH_INTERVAL = 0.0005
MAX_BATCH = 512  # operations per transaction: bounds how long a batch holds the write lock
_STOP = object()


class Writer:
    def __init__(self, path: str, setup: Callable[[sqlite3.Connection], None]) -> None:
        self._path = path
        self._setup = setup
        self._ops: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._syncs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._ready: asyncio.Future[None] | None = None
        self._wal: int | None = None  # a descriptor of the -wal file, for fsync
        self.batches = 0  # transactions committed
        self.operations = 0
        self.syncs = 0  # fsyncs of the WAL (the benchmark reports jobs per fsync)

    async def start(self) -> None:
        # The writer thread needs the GIL for a few microseconds per operation; by default a thread waits up to
        # 5 ms for the event loop to hand it over, which would be added to every job handed out.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._threads = [threading.Thread(target=self._run, args=(loop,), name="lbproxy-sqlite", daemon=True),
                         threading.Thread(target=self._sync, args=(loop,), name="lbproxy-fsync", daemon=True)]
        for thread in self._threads:
            thread.start()
        await self._ready

    async def stop(self) -> None:
        if not self._threads:
            return
        self._ops.put(_STOP)  # the writer passes it on to the syncer after its last batch
        for thread in self._threads:
            await asyncio.to_thread(thread.join)
        self._threads = []

    async def run(self, op: Callable[[sqlite3.Connection], T], durable: bool = True,
                  visible: Callable[[T], None] | None = None) -> T:
        """Run ``op`` in the next transaction; its result once that transaction is committed and, when
        ``durable``, on disk. ``visible(result)`` is called on the loop as soon as it is committed, before the
        fsync (e.g. to hand a new job to a waiting worker).

        ``durable=False`` is for reads, claims, lease renewals and progress: such a commit survives a crash of
        lbproxy (it is in the OS's cache, and the next fsync covers it) but maybe not a power loss, which at
        worst hands a job out once more.
        """
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._ops.put((op, fut, durable, visible))
        return await fut

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._ready is not None
        ready = self._ready
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            self._setup(conn)
            conn.execute("PRAGMA synchronous=NORMAL")  # the fsync thread makes durable commits durable
            self._wal = os.open(f"{self._path}-wal", os.O_RDONLY | os.O_CREAT, 0o644)
        except BaseException as exc:
            loop.call_soon_threadsafe(_fail, ready, exc)
            self._syncs.put(_STOP)
            return
        loop.call_soon_threadsafe(_succeed, ready, None)
        try:
            while True:
                first = self._ops.get()
                if first is _STOP:
                    return
                batch = [first]
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        item = self._ops.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        stop = True
                        break
                    batch.append(item)
                self._commit(conn, batch, loop)
                if stop:
                    return
        finally:
            conn.close()
            self._syncs.put(_STOP)

    def _commit(self, conn: sqlite3.Connection, batch: list[Any], loop: asyncio.AbstractEventLoop) -> None:
        now: list[Outcome] = []  # answered at commit
        later: list[Outcome] = []  # answered after the fsync
        shown: list[tuple[Callable[[Any], None], Any]] = []
        committed = True
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, fut, durable, visible in batch:
                conn.execute("SAVEPOINT op")
                try:
                    value = op(conn)
                except Exception as exc:  # this caller's error, not the batch's
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    now.append((fut, False, exc))
                else:
                    conn.execute("RELEASE op")
                    (later if durable else now).append((fut, True, value))
                    if visible is not None:
                        shown.append((visible, value))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:  # the commit itself failed (disk full, I/O error): nobody's change holds
            log.error("job store commit failed: %s", exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            now, later, shown, committed = [(item[1], False, exc) for item in batch], [], [], False
        self.batches += 1
        self.operations += len(batch)
        loop.call_soon_threadsafe(_resolve, now, shown)
        if later and committed:
            self._syncs.put(later)

    def _sync(self, loop: asyncio.AbstractEventLoop) -> None:
        """fsync the WAL for every durable batch committed so far, then answer their callers."""
        stop = False
        while not stop:
            waiting: list[Outcome] = []
            item = self._syncs.get()
            while True:
                if item is _STOP:
                    stop = True
                else:
                    waiting.extend(item)
                try:
                    item = self._syncs.get_nowait()
                except queue.Empty:
                    break
            if not waiting:
                continue
            try:
                assert self._wal is not None
                os.fsync(self._wal)  # per inode: covers every commit written to the WAL before this call
                self.syncs += 1
            except OSError as exc:
                log.error("job store fsync failed: %s", exc)
                waiting = [(fut, False, exc) for fut, _, _ in waiting]
            loop.call_soon_threadsafe(_resolve, waiting, [])
        if self._wal is not None:
            with contextlib.suppress(OSError):
                os.close(self._wal)


def _resolve(outcomes: list[Outcome], shown: list[tuple[Callable[[Any], None], Any]]) -> None:
    for callback, value in shown:
        try:
            callback(value)
        except Exception:  # a callback's bug must not keep the callers from their answers
            log.exception("job store callback failed")
    for fut, ok, value in outcomes:
        (_succeed if ok else _fail)(fut, value)


def _succeed(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
