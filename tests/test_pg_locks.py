"""PgSessionLocks on its own: what two processes' lock objects see of each other, a lost lock connection, and a
caller that gives up while PostgreSQL is answering."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from gateway.chat.pg_locks import PgSessionLocks, session_key
from gateway.errors import StreamInProgress
from gateway.store.db import create_engine
from tests.test_scale_out import kill_backend


@pytest.fixture
async def two_processes(pg_db_url: str) -> AsyncIterator[tuple[PgSessionLocks, PgSessionLocks]]:
    engine = create_engine(pg_db_url)
    a, b = await PgSessionLocks.open(engine), await PgSessionLocks.open(engine)
    yield a, b
    await a.close()
    await b.close()
    await engine.dispose()


def test_keys_are_stable_signed_64_bit() -> None:
    key = session_key("3f2b1c9e-0000-4000-8000-000000000000")
    assert key == session_key("3f2b1c9e-0000-4000-8000-000000000000")  # the same in every process, every run
    assert -(2**63) <= key < 2**63
    assert key != session_key("3f2b1c9e-0000-4000-8000-000000000001")


async def test_each_session_has_one_owner_across_processes(two_processes: tuple[PgSessionLocks, ...]) -> None:
    a, b = two_processes
    lease = await a.acquire("s1")
    with pytest.raises(StreamInProgress, match="another gateway process"):
        await b.acquire("s1")
    with pytest.raises(StreamInProgress, match="already streaming"):
        await a.acquire("s1")  # same process: refused without asking PostgreSQL (its locks are re-entrant)
    other = await b.acquire("s2")
    await lease.release()
    await lease.release()  # twice is harmless
    await (await b.acquire("s1")).release()
    await other.release()
    assert a.held == {} and b.held == {}


async def test_a_lost_lock_connection_takes_back_what_is_still_streaming(
    two_processes: tuple[PgSessionLocks, ...], pg_db_url: str
) -> None:
    a, b = two_processes
    streaming = await a.acquire("kept")
    stolen = await a.acquire("stolen")
    assert a.backend_pid is not None
    await kill_backend(pg_db_url, a.backend_pid)
    taken_by_b = await b.acquire("stolen")  # while A is cut off, its locks are free

    await (await a.acquire("new")).release()  # A reconnects here, and takes back what it still streams
    with pytest.raises(StreamInProgress):
        await b.acquire("kept")
    assert set(a.held) == {"kept"}  # "stolen" stays B's; A logged it
    await stolen.release()  # releasing a lock the server dropped is a no-op, not an error
    with pytest.raises(StreamInProgress):
        await a.acquire("stolen")  # B still owns it
    await streaming.release()
    await taken_by_b.release()


async def test_a_caller_cancelled_mid_acquire_leaves_nothing_locked(two_processes: tuple[PgSessionLocks, ...]) -> None:
    a, b = two_processes
    async with a._io:  # hold the lock connection busy so the acquire is parked mid-way
        pending = asyncio.ensure_future(a.acquire("s1"))
        await asyncio.sleep(0)  # one turn of the loop: the acquire is now waiting for the connection
        assert "s1" in a.busy
        pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await a.settled()
    # The statement still ran; its lock was given back once it answered.
    lease = await b.acquire("s1")
    await lease.release()
    assert "s1" not in a.busy and a.held == {}
