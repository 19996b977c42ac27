"""Session locks every gateway process sees: PostgreSQL advisory locks, all held on one dedicated connection.

A session-level advisory lock lives exactly as long as the connection that took it, so a process that dies (crash,
OOM kill, power loss on its machine) releases every session it was streaming without anyone cleaning up: nothing is
left set forever. One connection per process, not one per stream, holds them all, so a process never needs more than
`pool_size + max_overflow + 1` connections however many replies it streams (docs/DEPLOY.md has the sizing).

Advisory locks are re-entrant per connection, so PostgreSQL would let this process take one session twice: the
in-process set refuses that (and answers most refusals without a round trip); PostgreSQL refuses every other process.

Keys are 64-bit hashes of the session id. Two sessions whose hashes collide (about one pair in 4e9 among 6e4 sessions
streaming at the same moment) only get a needless STREAM_IN_PROGRESS across processes, which the client retries.

If the lock connection itself drops while this process lives (database restart, network cut), its locks are gone
with it; the next acquire or release reconnects and takes the sessions still streaming here back. A session that
another process took in between keeps streaming in both, and a warning says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from gateway.errors import DatabaseUnavailable, StreamInProgress
from gateway.store.db import is_connectivity_error, pg_connect_args

from .locks import OnceLease

log = logging.getLogger(__name__)

_TRY_LOCK = text("SELECT pg_try_advisory_lock(CAST(:key AS BIGINT))")
_UNLOCK = text("SELECT pg_advisory_unlock(CAST(:key AS BIGINT))")
# pg_try_advisory_lock never waits, so a statement slower than this means the server is not answering.
_STATEMENT_TIMEOUT_S = 10.0


def session_key(session_id: str) -> int:
    """A stable signed 64-bit key: the same in every process and across restarts (unlike Python's hash())."""
    digest = hashlib.sha256(b"agentspace-session:" + session_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PgSessionLocks:
    def __init__(self, lock_engine: AsyncEngine) -> None:
        self._engine = lock_engine
        self._conn: AsyncConnection | None = None
        self._io = asyncio.Lock()  # one statement at a time on the shared connection
        self.busy: set[str] = set()  # sessions claimed in this process, including claims still being asked
        self.held: dict[str, int] = {}  # session id -> key PostgreSQL granted on the current connection
        self.backend_pid: int | None = None  # the lock connection's server process, for operators and tests
        self._cleanups: set[asyncio.Task[None]] = set()

    @classmethod
    async def open(cls, engine: AsyncEngine) -> PgSessionLocks:
        """A NullPool engine of its own: the lock connection is never shared with, nor starved by, the main pool.
        AUTOCOMMIT so it never sits idle in a transaction (which would hold back VACUUM)."""
        lock_engine = create_async_engine(
            engine.url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args=pg_connect_args("agentspace-locks", command_timeout=_STATEMENT_TIMEOUT_S),
        )
        locks = cls(lock_engine)
        try:
            async with locks._io:
                await locks._connection()
        except BaseException:
            await lock_engine.dispose()
            raise
        return locks

    async def acquire(self, session_id: str) -> OnceLease:
        if session_id in self.busy:
            raise StreamInProgress(f"session {session_id} is already streaming a reply", sessionId=session_id)
        self.busy.add(session_id)
        asking = asyncio.ensure_future(self._take(session_id))
        try:
            got = await asyncio.shield(asking)
        except asyncio.CancelledError:
            # The caller gave up, but the statement may still be granted: give the lock back once it answers.
            task = asyncio.ensure_future(self._give_back(asking, session_id))
            self._cleanups.add(task)
            task.add_done_callback(self._cleanups.discard)
            raise
        except BaseException:
            self.busy.discard(session_id)
            raise
        if not got:
            self.busy.discard(session_id)
            raise StreamInProgress(
                f"session {session_id} is streaming a reply through another gateway process", sessionId=session_id
            )
        # A turn being cancelled a second time must still give the session back.
        return OnceLease(lambda: asyncio.shield(self.release(session_id)))

    async def _give_back(self, asking: asyncio.Future[bool], session_id: str) -> None:
        with contextlib.suppress(Exception):
            await asking
        await self.release(session_id)

    async def settled(self) -> None:
        """Wait until locks taken for callers that gave up have been given back."""
        await asyncio.gather(*self._cleanups, return_exceptions=True)

    async def release(self, session_id: str) -> None:
        async with self._io:
            self.busy.discard(session_id)
            key = self.held.pop(session_id, None)
            if key is None or self._conn is None:
                return  # never granted, or its connection died and took the lock with it
            try:
                await self._conn.scalar(_UNLOCK, {"key": key})
            except Exception as exc:
                # Dead connection: the server already dropped the lock. Reconnect lazily, on the next acquire.
                log.warning("lock connection lost (%s): session %s was freed with it", type(exc).__name__, session_id)
                await self._drop()

    async def close(self) -> None:
        await self.settled()
        async with self._io:
            await self._drop()
            self.busy.clear()
            self.held.clear()
        await self._engine.dispose()

    async def _take(self, session_id: str) -> bool:
        key = session_key(session_id)
        async with self._io:
            for attempt in (1, 2):
                try:
                    conn = await self._connection()
                    got = bool(await conn.scalar(_TRY_LOCK, {"key": key}))
                except Exception as exc:
                    await self._drop()
                    if attempt == 2 or not is_connectivity_error(exc):
                        raise DatabaseUnavailable(f"session lock unavailable: {type(exc).__name__}") from exc
                    continue
                if got:
                    self.held[session_id] = key
                return got
        raise AssertionError("unreachable")

    async def _connection(self) -> AsyncConnection:
        """The live lock connection; after a loss, a new one that takes back the sessions still streaming here."""
        if self._conn is not None:
            return self._conn
        conn = await self._engine.connect()
        try:
            self.backend_pid = int(await conn.scalar(text("SELECT pg_backend_pid()")) or 0)
            lost = [sid for sid, key in self.held.items() if not await conn.scalar(_TRY_LOCK, {"key": key})]
        except BaseException:
            await _close_quietly(conn)
            raise
        for session_id in lost:
            del self.held[session_id]
            log.warning("session %s: another process took its lock while the lock connection was down", session_id)
        if self.held:
            log.warning("lock connection re-established; took back %d streaming sessions", len(self.held))
        self._conn = conn
        return conn

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close_quietly(conn)


async def _close_quietly(conn: AsyncConnection) -> None:
    try:
        await conn.invalidate()
        await conn.close()
    except Exception as exc:  # it is already broken; closing it is only tidying up
        log.debug("closing the lock connection: %s", exc)
