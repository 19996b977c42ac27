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
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, cast

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, Connection

from .db import begin_immediate, json_loads, sqlite_pragmas_for

T = TypeVar("T")

# Writes in one group commit at most: a transaction stays short, and a failing write costs the others one retry.
MAX_BATCH = 64
# Reads run beside writes (WAL lets them); a few threads are plenty: each unit of work takes well under 1 ms.
READER_THREADS = 2


class CancelledAfterCommit(asyncio.CancelledError):
    """The waiter of a write was cancelled, and the write committed all the same (the writer thread cannot be
    interrupted): `result` is what its work returned. A cancellation like any other to whoever does not look."""

    def __init__(self, result: object) -> None:
        super().__init__("cancelled after the write committed")
        self.result = result


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
        self._writer = Writer(self.engine)
        self._readers = ThreadPoolExecutor(READER_THREADS, thread_name_prefix="sqlite-reader")

    async def read(self, work: Callable[[Connection], T]) -> T:
        """`work(connection)` in a reader thread, outside any write transaction."""
        job = functools.partial(_read_only, self.engine, work)
        future = asyncio.get_running_loop().run_in_executor(self._readers, job)
        return await _to_the_end(future)

    async def write(self, work: Callable[[Connection], T], *, background: bool = False) -> T:
        """`work(connection)` committed by the writer thread, in order with this process's other writes except that
        `background` ones (nobody waits on them) give way to the rest."""
        result, ended = self._writer.submit(work, background=background)
        try:
            # Awaited directly, not through a shield: the caller resumes one loop pass after the commit, where a
            # shield costs another, and under load a pass is tens of milliseconds (issue 15: end frames).
            return cast(T, await result)
        except asyncio.CancelledError:
            # `result` is cancelled with us, but a thread cannot be interrupted: let the transaction end (committed
            # or not), however often we are cancelled meanwhile, so nothing our caller does next overlaps it; and
            # tell the caller whether it committed.
            while not ended.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({ended})
            committed, value = ended.result()
            if committed:
                raise CancelledAfterCommit(value) from None
            raise

    def close(self) -> None:
        self._writer.close()
        self._readers.shutdown(wait=True)
        self.engine.dispose()


async def _to_the_end(future: asyncio.Future[T]) -> T:
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        # A thread cannot be interrupted: let its unit of work end before our caller moves on.
        with contextlib.suppress(Exception):
            await future
        raise


# A queued write: its work, the future of its result, the future set when its transaction has ended (also when the
# result's waiter was cancelled) to whether it committed and what the work returned, and the loop they belong to.
Ended = tuple[bool, object]
Queued = tuple[Callable[[Connection], Any], "asyncio.Future[Any]", "asyncio.Future[Ended]", asyncio.AbstractEventLoop]
Settled = tuple["asyncio.Future[Any]", "asyncio.Future[Ended]", bool, object]


class Writer:
    """SQLite's one writer: a thread that commits, in one transaction, every write queued since its last commit
    (group commit: one commit and one sync of the WAL for all of them, up to MAX_BATCH), then goes straight on with
    the next ones. Issue 15: when the event loop handed each batch to a thread pool and waited for it, the writer
    sat idle between batches for as long as a saturated loop took to notice the last one had ended (60 of every
    100 ms at 200 streams), and end frames waited in that line. Writes run in the order they were submitted,
    except that background ones (nobody waits on them) go after the others."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._waited: deque[Queued] = deque()
        self._background: deque[Queued] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def submit(
        self, work: Callable[[Connection], Any], *, background: bool
    ) -> tuple[asyncio.Future[Any], asyncio.Future[Ended]]:
        """The futures of the write's result and of its transaction's end."""
        loop = asyncio.get_running_loop()
        result: asyncio.Future[Any] = loop.create_future()
        ended: asyncio.Future[Ended] = loop.create_future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the SQLite writer is closed")
            (self._background if background else self._waited).append((work, result, ended, loop))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sqlite-writer", daemon=True)
                self._thread.start()
            self._ready.notify()
        return result, ended

    def close(self) -> None:
        """Commit what is queued, then stop."""
        with self._ready:
            self._closed = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _take(self) -> list[Queued] | None:
        with self._ready:
            while not (self._waited or self._background or self._closed):
                self._ready.wait()
            batch: list[Queued] = []
            for queue in (self._waited, self._background):
                while queue and len(batch) < MAX_BATCH:
                    batch.append(queue.popleft())
            return batch or None  # None: closed, and nothing left

    def _run(self) -> None:
        while (batch := self._take()) is not None:
            try:
                outcomes = _batch(self._engine, [work for work, _, _, _ in batch])
            except BaseException as exc:  # never leave a caller waiting on a write this thread gave up
                outcomes = [(False, exc)] * len(batch)
            by_loop: dict[asyncio.AbstractEventLoop, list[Settled]] = {}
            for (_, result, ended, loop), (ok, value) in zip(batch, outcomes, strict=True):
                by_loop.setdefault(loop, []).append((result, ended, ok, value))
            for loop, settled in by_loop.items():
                with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is left to tell
                    loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[Settled]) -> None:
    for result, ended, ok, value in settled:
        ended.set_result((ok, value if ok else None))
        if result.done():
            continue  # its waiter was cancelled
        if ok:
            result.set_result(value)
        else:
            result.set_exception(cast(BaseException, value))


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
                begin_immediate(connection)
                results = [work(connection) for work in works]
            return [(True, result) for result in results]
        except Exception:
            pass  # rolled back: each on its own below
    return [_outcome(engine, work) for work in works]


def _read_only(engine: Engine, work: Callable[[Connection], T]) -> T:
    with engine.connect() as connection:
        return work(connection)
