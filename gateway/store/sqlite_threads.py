"""SQLite units of work in threads of our own: one hop from the event loop per transaction, not per statement.

aiosqlite runs every statement, fetch, commit and rollback in its thread and hands each result back through the
event loop: a turn's dozen statements are a dozen round trips, and under load each one waits for the loop's next
pass. Measured on 2 cores (issue 7): a turn's SQL cost ~15 ms of CPU through the async ORM, ~1.5 ms as prebuilt
Core statements run here. Work is a plain function of a sync SQLAlchemy `Connection`, so the same function runs on
PostgreSQL through `AsyncConnection.run_sync` (see `Database.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection

from .db import begin_immediate, json_loads, sqlite_pragmas_for

T = TypeVar("T")

# Reads run beside writes (WAL lets them); a few threads are plenty: each unit of work takes well under 1 ms.
READER_THREADS = 2


class SqliteThreads:
    """A sync engine on the same file, one writer thread and a few reader threads. Threads start on first use."""

    def __init__(self, url: URL, synchronous: str = "FULL") -> None:
        self.engine: Engine = create_engine(
            url.set(drivername="sqlite+pysqlite"),
            connect_args={"timeout": 10, "check_same_thread": False},
            json_deserializer=json_loads,
            pool_size=READER_THREADS + 1,
            max_overflow=READER_THREADS + 1,
        )
        event.listen(self.engine, "connect", sqlite_pragmas_for(synchronous))
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="sqlite-reader")

    async def run(self, work: Callable[[Connection], T], *, write: bool) -> T:
        """`work(connection)` in one transaction (committed when `write` and it returns)."""
        job = functools.partial(_in_transaction if write else _read_only, self.engine, work)
        future = asyncio.get_running_loop().run_in_executor(self._writer if write else self._readers, job)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # A thread cannot be interrupted: let its transaction end (committed or not) before our caller moves
            # on, so the caller's write lock never covers a transaction that is still running.
            with contextlib.suppress(Exception):
                await future
            raise

    async def run_batch(self, works: list[Callable[[Connection], object]]) -> list[tuple[bool, object]]:
        """Several writes in one transaction (one commit, one sync of the WAL under synchronous=FULL): each one's
        (succeeded, result or exception). If any of them raises, the transaction is rolled back and each is run
        again in a transaction of its own, so one write's failure never takes another's with it."""
        job = functools.partial(_batch, self.engine, works)
        future = asyncio.get_running_loop().run_in_executor(self._writer, job)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await future
            raise

    def close(self) -> None:
        self._writer.shutdown(wait=True)
        self._readers.shutdown(wait=True)
        self.engine.dispose()


def _in_transaction(engine: Engine, work: Callable[[Connection], T]) -> T:
    with engine.begin() as connection:
        begin_immediate(connection)
        return work(connection)


def _outcome(engine: Engine, work: Callable[[Connection], object]) -> tuple[bool, object]:
    try:
        return True, _in_transaction(engine, work)
    except Exception as exc:
        return False, exc


def _batch(engine: Engine, works: list[Callable[[Connection], object]]) -> list[tuple[bool, object]]:
    if len(works) > 1:
        try:
            with engine.begin() as connection:
                results = [work(connection) for work in works]
            return [(True, result) for result in results]
        except Exception:
            pass  # rolled back: each on its own below
    return [_outcome(engine, work) for work in works]


def _read_only(engine: Engine, work: Callable[[Connection], T]) -> T:
    with engine.connect() as connection:
        return work(connection)
