"""One AsyncSession per unit of work; on SQLite, writes are serialized in-process (it has one writer).

The hot path (a turn's reads and writes) uses `run`: a plain function of a sync Connection, in one transaction, run
in SQLite's own threads (one event-loop hop per transaction) or on PostgreSQL through `run_sync`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.ext.asyncio import AsyncSession as DbSession

from gateway.errors import DatabaseUnavailable

from .db import begin_immediate, is_connectivity_error
from .sqlite_threads import SqliteThreads

T = TypeVar("T")


class Database:
    def __init__(
        self, engine: AsyncEngine, sessionmaker: async_sessionmaker[DbSession], *, sqlite_synchronous: str = "FULL"
    ) -> None:
        self.engine = engine
        self.sessionmaker = sessionmaker
        self.dialect = engine.dialect.name
        # PostgreSQL handles concurrent writers itself; SQLite would answer "database is locked" instead.
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self.dialect == "sqlite" else None
        database = engine.url.database
        # A file database gets threads of its own; ":memory:" is one connection's private database, so it stays on
        # the async engine's.
        on_file = self.dialect == "sqlite" and bool(database) and database != ":memory:"
        self._threads: SqliteThreads | None = SqliteThreads(engine.url, sqlite_synchronous) if on_file else None

    @property
    def sync_engines(self) -> list[Engine]:
        """Every engine that runs SQL for this database (for metrics hooks)."""
        engines = [self.engine.sync_engine]
        if self._threads is not None:
            engines.append(self._threads.engine)
        return engines

    async def run(self, work: Callable[[Connection], T], *, write: bool = False, background: bool = False) -> T:
        """`work(connection)` as one unit of work: one transaction, committed when `write` and it returns. A
        `background` write is one nobody waits on (a checkpoint, a provisional usage row): on SQLite it gives way to
        the others."""
        try:
            if self._threads is not None:
                if not write:
                    return await self._threads.read(work)
                return await self._threads.write(work, background=background)
            async with self.engine.begin() if write else self.engine.connect() as connection:
                return await connection.run_sync(work)
        except (DBAPIError, SATimeoutError, OSError) as exc:
            if is_connectivity_error(exc):
                raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc
            raise

    @property
    def writes_in_order(self) -> bool:
        """This process's writes commit one after another in the order they were made (SQLite's writer thread), so
        a write need not wait for an earlier one to end before it is made."""
        return self._threads is not None

    async def close(self) -> None:
        if self._threads is not None:
            threads, self._threads = self._threads, None
            await asyncio.to_thread(threads.close)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[DbSession]:
        try:
            async with self.sessionmaker() as db:
                yield db
        except (DBAPIError, SATimeoutError, OSError) as exc:
            if is_connectivity_error(exc):
                raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc
            raise

    @asynccontextmanager
    async def write(self) -> AsyncIterator[DbSession]:
        try:
            if self._write_lock is None:
                async with self.sessionmaker() as db, db.begin():
                    yield db
            else:
                async with self._write_lock, self.sessionmaker() as db, db.begin():
                    await db.run_sync(lambda sync: begin_immediate(sync.connection()))
                    yield db
        except (DBAPIError, SATimeoutError, OSError) as exc:
            if is_connectivity_error(exc):
                raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc
            raise
