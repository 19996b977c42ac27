"""SQLite writes that queue up behind a running one are committed together (gateway/store/sqlite_threads.py): each
still commits before its caller goes on, one that fails fails alone, and background writes give way."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Connection

from gateway.store import Database
from gateway.store.db import create_engine, make_sessionmaker


async def test_queued_writes_commit_together_and_fail_alone(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    db = Database(engine, make_sessionmaker(engine))
    try:
        await db.run(lambda c: c.execute(text("create table t (n integer primary key)")), write=True)
        commits: list[object] = []
        event.listen(db.sync_engines[-1], "commit", commits.append)

        def insert(n: int):  # type: ignore[no-untyped-def]
            def work(conn: Connection) -> int:
                conn.execute(text("insert into t (n) values (:n)"), {"n": n})
                if n == 13:
                    raise ValueError("unlucky")
                return n

            return work

        # Writes queued together commit together.
        done = await asyncio.gather(*(db.run(insert(n), write=True) for n in range(1000, 1040)))
        assert done == list(range(1000, 1040)) and len(commits) < 40
        await db.run(lambda c: c.execute(text("delete from t")), write=True)

        results = await asyncio.gather(*(db.run(insert(n), write=True) for n in range(40)), return_exceptions=True)
        assert [r for r in results if isinstance(r, Exception)] == [results[13]]
        assert isinstance(results[13], ValueError)
        assert [r for r in results if not isinstance(r, Exception)] == [n for n in range(40) if n != 13]
        rows = await db.run(lambda c: [n for (n,) in c.execute(text("select n from t order by n"))])
        assert rows == [n for n in range(40) if n != 13]  # all committed but the one that failed, nothing twice

        # A cancelled caller moves on only after its write's transaction ended; the write itself is kept.
        task = asyncio.ensure_future(db.run(insert(100), write=True))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await db.run(lambda c: c.execute(text("select count(*) from t where n = 100")).scalar()) == 1
    finally:
        await db.close()
        await engine.dispose()


async def test_background_writes_give_way_and_the_rest_keep_their_order(tmp_path: Path) -> None:
    """A checkpoint or a provisional usage row (background) never delays a write someone waits on, such as the one
    an end frame waits for; the other writes commit in the order they were made."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    db = Database(engine, make_sessionmaker(engine))
    try:
        await db.run(lambda c: c.execute(text("create table t (n integer primary key, at integer)")), write=True)
        started, release = threading.Event(), threading.Event()
        order: list[int] = []

        def hold(conn: Connection) -> None:
            started.set()
            release.wait(10)

        def insert(n: int):  # type: ignore[no-untyped-def]
            def work(conn: Connection) -> None:
                order.append(n)
                conn.execute(text("insert into t (n, at) values (:n, :at)"), {"n": n, "at": len(order)})

            return work

        held = asyncio.ensure_future(db.run(hold, write=True))
        await asyncio.to_thread(started.wait, 10)  # the writer is busy: what follows queues up
        writes = [db.run(insert(1), write=True, background=True), db.run(insert(2), write=True)]
        writes += [db.run(insert(3), write=True, background=True), db.run(insert(4), write=True)]
        queued = [asyncio.ensure_future(w) for w in writes]
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(held, *queued)
        assert order == [2, 4, 1, 3]
        stored = await db.run(lambda c: [n for (n,) in c.execute(text("select n from t order by at"))])
        assert stored == [2, 4, 1, 3]
        assert db.writes_in_order
    finally:
        await db.close()
        await engine.dispose()
