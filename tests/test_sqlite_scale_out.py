"""Several gateway processes on one SQLite file (`agentspace serve --workers N`): one stream per session across all
of them, a dead process's sessions freed, start-up recovery that leaves a live process's replies alone, resends
answered once, and totals exact under 40 concurrent clients.

Each "process" is a gateway app with its own engine, SQLite threads and lock file descriptor, which is what a
separate process has: the session locks are open-file-description locks, so two apps in one process exclude each
other exactly as two processes do. One test holds a lock from a real second process and kills it.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.chat.file_locks import FileSessionLocks, lock_path
from gateway.errors import StreamInProgress
from gateway.server.handlers import SERVICES
from gateway.settings import Settings
from tests.conftest import Gateway, chat, collect, make_settings, request, send
from tests.databases import rows, scalar
from tests.fake_anthropic import FakeAnthropic, Reply
from tests.sql import sql_exec
from tests.test_scale_out import reply_statuses, start_held

Factory = Callable[[Settings], Awaitable[Gateway]]


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    return tmp_path / "gateway.db"


@pytest.fixture
def file_settings(tmp_path: Path, fake: FakeAnthropic, db_file: Path) -> Settings:
    return make_settings(tmp_path / "home", fake, f"sqlite+aiosqlite:///{db_file}")


def _url(settings: Settings) -> str:
    return settings.db_url


async def test_sqlite_gateways_lock_sessions_in_a_file_beside_the_database(
    gateway_factory: Factory, file_settings: Settings, db_file: Path
) -> None:
    gateway = await gateway_factory(file_settings)
    locks = gateway.app[SERVICES].locks
    assert isinstance(locks, FileSessionLocks) and locks.path == lock_path(db_file)
    assert lock_path(db_file).name == "gateway.db-sessions.lock"
    assert lock_path(db_file).stat().st_mode & 0o777 == 0o600


async def test_one_stream_per_session_across_processes(
    gateway_factory: Factory, file_settings: Settings, fake: FakeAnthropic
) -> None:
    a, b = await gateway_factory(file_settings), await gateway_factory(file_settings)
    ws_a, ws_b = await a.ws(), await b.ws()
    session_id = await start_held(ws_a, fake, 1, id="a1")

    refused = await chat(ws_b, "me too", id="b1", sessionId=session_id)
    assert [(f["type"], f.get("code"), f.get("retryable")) for f in refused] == [("error", "STREAM_IN_PROGRESS", True)]
    assert "another gateway process" in refused[0]["message"]
    assert (await chat(ws_b, "a different session", id="b2"))[-1]["type"] == "chat.stream.end"

    fake.release()
    assert (await collect(ws_a))[-1]["type"] == "chat.stream.end"
    # Free through the other process the moment the end frame arrived.
    assert (await chat(ws_b, "my turn now", id="b3", sessionId=session_id))[-1]["type"] == "chat.stream.end"
    assert (await chat(ws_a, "and mine", id="a2", sessionId=session_id))[-1]["type"] == "chat.stream.end"
    history = await request(ws_a, {"type": "session.history", "sessionId": session_id})
    assert [m["status"] for m in history["messages"] if m["role"] == "assistant"] == ["complete"] * 3
    await ws_a.close()
    await ws_b.close()


async def test_startup_recovers_only_replies_no_live_process_holds(
    gateway_factory: Factory, file_settings: Settings, fake: FakeAnthropic
) -> None:
    live, doomed = await gateway_factory(file_settings), await gateway_factory(file_settings)
    live_session = await start_held(await live.ws(), fake, 1)
    dead_session = await start_held(await doomed.ws(), fake, 2)
    # What the kernel does when the process dies: its lock file is closed, every lock on it gone.
    await doomed.app[SERVICES].locks.close()
    url = _url(file_settings)
    assert await reply_statuses(url) == {live_session: "streaming", dead_session: "streaming"}

    await gateway_factory(file_settings)  # another worker starts (or is restarted) while the first streams

    assert await reply_statuses(url) == {live_session: "streaming", dead_session: "interrupted"}
    fake.release()


_HOLDER = """
import sys
from pathlib import Path
from gateway.chat.file_locks import FileSessionLocks
import asyncio
locks = FileSessionLocks(Path(sys.argv[1]))
asyncio.run(locks.acquire(sys.argv[2]))
print("held", flush=True)
sys.stdin.read()
"""


async def test_a_lock_held_by_another_process_refuses_and_its_death_frees_it(tmp_path: Path) -> None:
    path = tmp_path / "gateway.db-sessions.lock"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, str(path), "s1", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"held\n"
        locks = FileSessionLocks(path)
        with pytest.raises(StreamInProgress, match="another gateway process"):
            await locks.acquire("s1")
        other = await locks.acquire("s2")  # only that session's byte is taken
        await other.release()

        holder.send_signal(signal.SIGKILL)  # no clean-up of any kind
        await holder.wait()
        lease = await locks.acquire("s1")
        with pytest.raises(StreamInProgress, match="already streaming"):
            await locks.acquire("s1")  # the kernel would grant our own byte twice; the process refuses
        await lease.release()
        await (await locks.acquire("s1")).release()
        await locks.close()
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def test_resends_through_two_processes_start_one_request(
    gateway_factory: Factory, file_settings: Settings, fake: FakeAnthropic
) -> None:
    a, b = await gateway_factory(file_settings), await gateway_factory(file_settings)
    sockets = [await (a if n % 2 else b).ws() for n in range(4)]
    frame = {"type": "chat.send", "id": "r", "content": "once only", "idempotencyKey": "key-x"}
    await asyncio.gather(*(send(ws, frame) for ws in sockets))
    ends = [(await collect(ws))[-1] for ws in sockets]
    assert [e["type"] for e in ends].count("chat.stream.end") == 1
    assert all(e["type"] in ("chat.stream.end", "chat.state") for e in ends), ends
    url = _url(file_settings)
    assert await rows(url, "select count(*) from messages where idempotency_key = 'key-x'") == [(1,)]
    assert await scalar(url, "select count(*) from usage_records") == 1
    assert len([r for r in fake.requests if r.path.endswith("/messages")]) == 1
    for ws in sockets:
        await ws.close()


async def test_forty_clients_through_two_processes_keep_totals_exact(
    gateway_factory: Factory, file_settings: Settings, fake: FakeAnthropic
) -> None:
    apps = [await gateway_factory(file_settings), await gateway_factory(file_settings)]
    clients, turns_each = 40, 2
    fake.default = Reply(text="an answer in a few words", input_tokens=21, output_tokens=7)

    async def client(n: int) -> None:
        ws = await apps[n % 2].ws()
        session_id = (await chat(ws, f"client {n} says hello"))[0]["sessionId"]
        for turn in range(1, turns_each):
            other = await apps[(n + turn) % 2].ws()  # the same session through the other process
            assert (await chat(other, f"client {n} turn {turn}", sessionId=session_id))[-1]["type"] == (
                "chat.stream.end"
            )
            await other.close()
        await ws.close()

    await asyncio.gather(*(client(n) for n in range(clients)))
    turns = clients * turns_each
    url = _url(file_settings)
    count, distinct_ids, distinct_messages, complete, input_tokens, output_tokens, cost = (
        await rows(
            url,
            "SELECT count(*), count(DISTINCT id), count(DISTINCT message_id),"
            " sum(CASE WHEN status = 'complete' THEN 1 ELSE 0 END), sum(input_tokens), sum(output_tokens),"
            " sum(total_cost) FROM usage_records",
        )
    )[0]
    assert (count, distinct_ids, distinct_messages, complete) == (turns, turns, turns, turns)
    assert (input_tokens, output_tokens) == (21 * turns, 7 * turns)
    assert await scalar(url, "SELECT samples FROM token_calibration") == turns
    assert await scalar(url, "SELECT count(*) FROM messages WHERE status = 'complete'") == 2 * turns
    assert await scalar(url, "SELECT sum(message_count) FROM sessions") == 2 * turns
    # The rollups the triggers keep agree with the rows, whichever process wrote them.
    daily = "SELECT sum(request_count), sum(input_tokens), sum(output_tokens), sum(total_cost) FROM usage_daily"
    assert await rows(url, daily) == [(turns, 21 * turns, 7 * turns, cost)]
    reports = []
    for app in apps:
        ws = await app.ws()
        reports.append(await request(ws, {"type": "usage.query"}))
        await ws.close()
    assert reports[0]["grandTotal"] == reports[1]["grandTotal"]
    total = reports[0]["grandTotal"]
    assert (total["requestCount"], total["inputTokens"], total["outputTokens"]) == (turns, 21 * turns, 7 * turns)


async def test_a_write_that_waits_for_another_process_is_not_refused(
    gateway_factory: Factory, file_settings: Settings, db_file: Path
) -> None:
    """Another process holding the write lock (here: sqlite3 itself) delays a unit of work that reads then writes;
    it is never refused with "database is locked", and its read and write are one transaction (BEGIN IMMEDIATE)."""
    gateway = await gateway_factory(file_settings)
    database = gateway.app[SERVICES].store.database

    def read_then_write(conn: Any) -> int:
        count = int(conn.exec_driver_sql("SELECT count(*) FROM api_keys").scalar_one())
        conn.exec_driver_sql(
            "INSERT INTO api_keys (id, name, key_hash, prefix, created_at) "
            f"VALUES ('k{count}', 'key {count}', 'h{count}', 'p', '2026-01-01')"
        )
        return count

    blocker = sqlite3.connect(db_file, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    blocker.execute(
        "INSERT INTO api_keys (id, name, key_hash, prefix, created_at) VALUES ('kb', 'b', 'hb', 'p', '2026-01-01')"
    )
    try:
        unit = asyncio.ensure_future(database.run(read_then_write, write=True))
        done, _ = await asyncio.wait({unit}, timeout=0.2)
        assert not done  # waiting for the lock, not failed
    finally:
        blocker.execute("COMMIT")
        blocker.close()
    assert await unit == 1  # it read after the other writer's commit: its count includes that row
    assert await scalar(file_settings.db_url, "SELECT count(*) FROM api_keys") == 2


async def test_a_send_marks_a_dead_processs_reply_interrupted_and_leaves_a_live_one_alone(
    gateway_factory: Factory, file_settings: Settings, fake: FakeAnthropic
) -> None:
    """A process died while it streamed a reply (its row and its usage row still say `streaming`): the next send to that
    session, through another process, marks both `interrupted` and goes on. A reply another process is streaming
    right now, in another session, is left as it is."""
    url = _url(file_settings)
    a, b = await gateway_factory(file_settings), await gateway_factory(file_settings)
    ws_a, ws_b = await a.ws(), await b.ws()
    dead = (await chat(ws_a, "first", id="d1"))[-1]["sessionId"]
    [(dead_reply,)] = await rows(url, "SELECT id FROM messages WHERE session_id = :s AND role = 'assistant'", s=dead)
    # As if the process had died mid-stream: what start-up recovery would find, but no process restarts.
    await sql_exec(url, "UPDATE messages SET status = 'streaming' WHERE id = :m", m=dead_reply)
    await sql_exec(url, "UPDATE usage_records SET status = 'streaming' WHERE session_id = :s", s=dead)
    live = await start_held(ws_a, fake, 1, id="a2")

    assert (await chat(ws_b, "again", id="b1", sessionId=dead))[-1]["type"] == "chat.stream.end"
    assert await rows(
        url, "SELECT status FROM messages WHERE session_id = :s AND role = 'assistant' ORDER BY seq", s=dead
    ) == [
        ("interrupted",),
        ("complete",),
    ]
    assert await rows(url, "SELECT status FROM usage_records WHERE session_id = :s ORDER BY created_at", s=dead) == [
        ("interrupted",),
        ("complete",),
    ]
    assert (await reply_statuses(url))[live] == "streaming"
    fake.release()
    assert (await collect(ws_a))[-1]["type"] == "chat.stream.end"
    assert (await reply_statuses(url))[live] == "complete"
