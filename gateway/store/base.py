"""One AsyncSession per unit of work; on SQLite, writes are serialized in-process (it has one writer).

The hot path (a turn's reads and writes) uses `run`: a plain function of a sync Connection, in one transaction, run
in SQLite's own threads (one event-loop hop per transaction) or on PostgreSQL through `run_sync`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

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
# Writes in one group commit at most: a transaction stays short, and a failing write costs the others one retry.
MAX_BATCH = 64


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
        self._queued: list[tuple[Callable[[Connection], Any], asyncio.Future[Any]]] = []
        self._drainer: asyncio.Task[None] | None = None

    @property
    def sync_engines(self) -> list[Engine]:
        """Every engine that runs SQL for this database (for metrics hooks)."""
        engines = [self.engine.sync_engine]
        if self._threads is not None:
            engines.append(self._threads.engine)
        return engines

    async def run(self, work: Callable[[Connection], T], *, write: bool = False) -> T:
        """`work(connection)` as one unit of work: one transaction, committed when `write` and it returns."""
        try:
            if self._threads is not None:
                if not write:
                    return await self._threads.run(work, write=False)
                return await self._write_batched(work)
            async with self.engine.begin() if write else self.engine.connect() as connection:
                return await connection.run_sync(work)
        except (DBAPIError, SATimeoutError, OSError) as exc:
            if is_connectivity_error(exc):
                raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc
            raise

    async def _write_batched(self, work: Callable[[Connection], T]) -> T:
        """A write in SQLite's writer thread. Writes that queue up while one runs go together in the next
        transaction (group commit): under load a turn's writes used to wait in line for a commit each, and its end
        frame with them (issue 15). Each write still commits before its caller goes on, or fails alone."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((work, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        try:
            return cast(T, await asyncio.shield(future))
        except asyncio.CancelledError:
            # As a single write did: the caller moves on only once its transaction has ended, committed or not.
            with contextlib.suppress(Exception):
                await future
            raise

    async def _drain(self) -> None:
        assert self._threads is not None and self._write_lock is not None
        while self._queued:
            async with self._write_lock:  # the async engine's writes (Database.write) take turns with these
                batch, self._queued = self._queued[:MAX_BATCH], self._queued[MAX_BATCH:]
                try:
                    outcomes = await self._threads.run_batch([work for work, _ in batch])
                except BaseException as exc:  # the thread pool is gone (shutdown): every write in it fails
                    outcomes = [(False, exc)] * len(batch)
            for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(cast(BaseException, value))

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
