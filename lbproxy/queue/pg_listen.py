"""The PostgreSQL store's own session: LISTEN for other replicas' changes, and the local leader's advisory lock.

One dedicated connection (LISTEN and session advisory locks belong to a session, so they cannot use the
pool). When it drops (the database restarts, the network cuts it) the loop connects again with back-off and
listens again; meanwhile ``listening`` is False and the queue service polls the store instead, with a bound.
Notifications sent while it was down are lost, so after each reconnect ``on_resync`` runs: whoever waits
looks at the store again. A lock held on this session is released by the server when the session ends, so a
replica that dies (or loses its database) stops leading at once, and another one takes over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

log = logging.getLogger("lbproxy.queue.postgres")

FIRST_RETRY = 0.25
MAX_RETRY = 5.0
CHECK_EVERY = 2.0  # a query on the session this often: a silently dead TCP path is noticed within seconds
CHECK_TIMEOUT = 5.0


class Session:
    """The dedicated connection: LISTEN ``channel`` and hold session locks; reconnect forever until closed."""

    def __init__(self, connect: Callable[[], Awaitable[Any]], channel: str, on_payload: Callable[[str], None],
                 on_resync: Callable[[], None], where: str) -> None:
        self._connect = connect
        self.channel = channel
        self.on_payload = on_payload
        self.on_resync = on_resync
        self.where = where  # the database as logs show it (no password)
        self.conn: Any = None
        self.listening = False
        self.locks: set[int] = set()  # advisory locks this session holds now
        self._task: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()
        self._up = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="queue store session")
        # The first connection is made before open() returns (the pool just connected: so can this).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CHECK_TIMEOUT):
                await self._up.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._drop()

    async def try_lock(self, key: int) -> bool:
        """Take the session advisory lock ``key`` if free (held until released or the session ends)."""
        if key in self.locks:
            return True
        conn = self.conn
        if conn is None or not self.listening:
            return False
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                got = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
            return False
        if got:
            self.locks.add(key)
        return got

    async def unlock(self, key: int) -> None:
        if key not in self.locks:
            return
        self.locks.discard(key)
        conn = self.conn
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                async with asyncio.timeout(CHECK_TIMEOUT):
                    await conn.execute("SELECT pg_advisory_unlock($1)", key)

    def _payload(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            self.on_payload(payload)
        except Exception:  # a bug in a handler must not end the listening
            log.exception("handling a notification failed")

    def _terminated(self, conn: Any) -> None:
        self._lost.set()

    async def _run(self) -> None:
        delay = FIRST_RETRY
        first = True
        while True:
            try:
                conn = await self._connect()
                self.conn = conn
                self._lost.clear()
                conn.add_termination_listener(self._terminated)
                await conn.add_listener(self.channel, self._payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.listening or first:
                    log.warning("job store notifications from %s are down (%s): polling the store meanwhile; "
                                "retrying", self.where, _reason(exc))
                first = False
                self.listening = False
                await self._drop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY)
                continue
            if not first:
                log.info("job store notifications from %s are back", self.where)
            first = False
            delay = FIRST_RETRY
            self.listening = True
            self._up.set()
            try:
                self.on_resync()  # what was sent while nobody listened is lost: look again
            except Exception:
                log.exception("resync after reconnecting failed")
            await self._watch(conn)
            self.listening = False
            self.locks.clear()  # the server released them with the session
            log.warning("job store session to %s lost: polling the store until it is back", self.where)
            await self._drop()

    async def _watch(self, conn: Any) -> None:
        """Return when the session is gone: closed by the server, or no answer to a check."""
        while not self._lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CHECK_EVERY):
                    await self._lost.wait()
                    return
            try:
                async with asyncio.timeout(CHECK_TIMEOUT):
                    await conn.execute("SELECT 1")
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
                return

    async def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.terminate()  # no goodbye to a server that may be gone


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
