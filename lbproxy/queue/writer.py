"""One SQLite connection on one thread, with group commit: many callers, one transaction, one fsync.

Every operation is a function of the connection. The thread takes all operations waiting at that moment,
runs each inside a savepoint of one transaction (so one failing operation does not undo the others),
commits once, and only then resolves the callers' futures on their event loop. With ``synchronous=FULL``
a commit is an fsync of the WAL; batching makes its cost per transaction, not per job, so a durable
commit before ``/run`` answers does not cap throughput at the disk's fsync rate.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("lbproxy.queue.sqlite")

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], Any]

MAX_BATCH = 512  # operations per transaction: bounds how long a batch holds the write lock
_STOP = object()


class Writer:
    def __init__(self, path: str, setup: Callable[[sqlite3.Connection], None]) -> None:
        self._path = path
        self._setup = setup
        self._ops: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready: asyncio.Future[None] | None = None
        self._durable = True  # the connection's synchronous setting (FULL, set up by the store)
        self.batches = 0  # transactions committed (the benchmark reports operations per commit)
        self.operations = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(loop,), name="lbproxy-sqlite", daemon=True)
        self._thread.start()
        await self._ready

    async def stop(self) -> None:
        if self._thread is None:
            return
        self._ops.put(_STOP)
        await asyncio.to_thread(self._thread.join)
        self._thread = None

    async def run(self, op: Callable[[sqlite3.Connection], T], durable: bool = True) -> T:
        """Run ``op`` in the next transaction; returns its result once that transaction is committed.

        ``durable=False``: the commit need not reach the disk before the answer (reads, claims, lease renewals,
        progress). Such a commit survives a crash of lbproxy (it is in the OS's cache) but not a power loss,
        which at worst hands a job out once more: at-least-once holds, and the fsync leaves the dispatch path.
        """
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._ops.put((op, fut, durable))
        return await fut

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._ready is not None
        ready = self._ready
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            self._setup(conn)
        except BaseException as exc:
            loop.call_soon_threadsafe(_fail, ready, exc)
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

    def _commit(self, conn: sqlite3.Connection, batch: list[Any], loop: asyncio.AbstractEventLoop) -> None:
        outcomes: list[tuple[asyncio.Future[Any], bool, Any]] = []
        durable = any(item[2] for item in batch)
        if durable != self._durable:  # WAL: FULL fsyncs at each commit, NORMAL only at checkpoints
            conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, fut, _ in batch:
                conn.execute("SAVEPOINT op")
                try:
                    value = op(conn)
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((fut, False, exc))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((fut, True, value))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:  # the commit itself failed (disk full, I/O error): nobody's change holds
            log.error("job store commit failed: %s", exc)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            outcomes = [(fut, False, exc) for _, fut, _ in batch]
        self.batches += 1
        self.operations += len(batch)
        loop.call_soon_threadsafe(_resolve, outcomes)


def _resolve(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in outcomes:
        (_succeed if ok else _fail)(fut, value)


def _succeed(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
