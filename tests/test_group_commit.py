"""SQLite writes that queue up behind a running one are committed together (gateway/store/base.py): each still
commits before its caller goes on, and one that fails fails alone."""

from __future__ import annotations

import asyncio
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
