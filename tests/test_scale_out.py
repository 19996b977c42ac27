"""Several gateway processes on one PostgreSQL database: one stream per session across all of them, a dead process's
sessions freed and its replies recovered, totals exact under concurrent writers, and migrations run once at start.

Each "process" is a gateway app with its own engine, pool and lock connection, exactly what a separate process has;
killing an app's lock connection (pg_terminate_backend) is what the server sees when that process dies.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url

from gateway.chat.pg_locks import PgSessionLocks
from gateway.server.handlers import SERVICES
from gateway.settings import Settings
from gateway.store.db import alembic_config
from tests.conftest import Gateway, chat, collect, make_settings, recv, request, send
from tests.databases import rows, scalar
from tests.fake_anthropic import FakeAnthropic, Reply
from tests.tcp_proxy import TcpProxy

Factory = Callable[[Settings], Awaitable[Gateway]]
REPO = Path(__file__).resolve().parent.parent


def _on_log(fragment: str) -> asyncio.Event:
    """An event set when the gateway logs a line containing `fragment` (logging calls handlers in the loop's
    thread, so the test can await it instead of polling)."""
    seen = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if fragment in record.getMessage():
                seen.set()
                logging.getLogger("gateway").removeHandler(self)

    logging.getLogger("gateway").addHandler(Watch())
    return seen


def lock_pid(gateway: Gateway) -> int:
    locks = gateway.app[SERVICES].locks
    assert isinstance(locks, PgSessionLocks) and locks.backend_pid
    return locks.backend_pid


async def kill_backend(db_url: str, pid: int) -> None:
    """What the server does when the process on the other end dies: the connection, and its locks, are gone."""
    conn = await asyncpg.connect(make_url(db_url).set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        # With a timeout, pg_terminate_backend returns only once the backend has exited.
        assert await conn.fetchval("SELECT pg_terminate_backend($1, 5000)", pid) is True
    finally:
        await conn.close()


async def start_held(ws: Any, fake: FakeAnthropic, holds: int, **fields: Any) -> str:
    """Start a chat whose upstream holds after its first delta; return its session id."""
    fake.queue(Reply(text="a long answer", hold_after_deltas=1))
    await send(ws, {"type": "chat.send", "id": fields.pop("id", "held"), "content": "take your time", **fields})
    first = await recv(ws)
    await fake.wait_held(holds)
    session_id: str = first["sessionId"]
    return session_id


async def reply_statuses(db_url: str) -> dict[str, str]:
    found = await rows(db_url, "SELECT session_id, status FROM messages WHERE role = 'assistant' ORDER BY seq")
    return {session_id: status for session_id, status in found}


async def test_one_stream_per_session_across_processes(
    gateway_factory: Factory, pg_settings: Settings, fake: FakeAnthropic
) -> None:
    a, b = await gateway_factory(pg_settings), await gateway_factory(pg_settings)
    ws_a, ws_b = await a.ws(), await b.ws()
    session_id = await start_held(ws_a, fake, 1, id="a1")

    refused = await chat(ws_b, "me too", id="b1", sessionId=session_id)
    assert [(f["type"], f.get("code"), f.get("retryable")) for f in refused] == [("error", "STREAM_IN_PROGRESS", True)]
    assert "another gateway process" in refused[0]["message"]
    # Other sessions are not held up by it, in either process.
    assert (await chat(ws_b, "a different session", id="b2"))[-1]["type"] == "chat.stream.end"

    fake.release()
    assert (await collect(ws_a))[-1]["type"] == "chat.stream.end"
    # Free through the other process the moment the end frame arrived: no waiting, no retry.
    assert (await chat(ws_b, "my turn now", id="b3", sessionId=session_id))[-1]["type"] == "chat.stream.end"
    assert (await chat(ws_a, "and mine", id="a2", sessionId=session_id))[-1]["type"] == "chat.stream.end"
    history = await request(ws_a, {"type": "session.history", "sessionId": session_id})
    assert [m["status"] for m in history["messages"] if m["role"] == "assistant"] == ["complete"] * 3


async def test_a_dead_process_frees_its_sessions_and_its_reply_is_recovered(
    gateway_factory: Factory, pg_settings: Settings, fake: FakeAnthropic, pg_db_url: str
) -> None:
    a, b = await gateway_factory(pg_settings), await gateway_factory(pg_settings)
    ws_a, ws_b = await a.ws(), await b.ws()
    session_id = await start_held(ws_a, fake, 1)
    assert (await chat(ws_b, "now?", sessionId=session_id))[0]["code"] == "STREAM_IN_PROGRESS"

    await kill_backend(pg_db_url, lock_pid(a))  # process A "dies" mid-stream

    frames = await chat(ws_b, "A is gone; carry on", id="b2", sessionId=session_id)
    assert frames[-1]["type"] == "chat.stream.end"
    # B's send found A's reply still `streaming` in a session nobody held: a dead process's, so interrupted,
    # keeping the text A had checkpointed (none here: it died within its first second).
    statuses = await rows(pg_db_url, "SELECT status FROM messages WHERE role = 'assistant' ORDER BY seq")
    assert statuses == [("interrupted",), ("complete",)]
    assert fake.requests[-1].body["messages"][-1]["content"][-1]["text"] == "A is gone; carry on"

    # A was only cut off from the database; it finishes its stream, and its next send takes a new lock connection.
    fake.release()
    assert (await collect(ws_a))[-1]["type"] == "chat.stream.end"
    assert (await chat(ws_a, "back again", id="a2", sessionId=session_id))[-1]["type"] == "chat.stream.end"
    assert lock_pid(a) > 0


async def test_startup_recovers_only_replies_no_live_process_holds(
    gateway_factory: Factory, pg_settings: Settings, fake: FakeAnthropic, pg_db_url: str
) -> None:
    live, doomed = await gateway_factory(pg_settings), await gateway_factory(pg_settings)
    live_session = await start_held(await live.ws(), fake, 1)
    dead_session = await start_held(await doomed.ws(), fake, 2)
    await kill_backend(pg_db_url, lock_pid(doomed))
    assert await reply_statuses(pg_db_url) == {live_session: "streaming", dead_session: "streaming"}

    await gateway_factory(pg_settings)  # a third process starts while the first is mid-stream

    assert await reply_statuses(pg_db_url) == {live_session: "streaming", dead_session: "interrupted"}
    fake.release()


async def test_concurrent_chats_through_two_processes_keep_totals_exact(
    gateway_factory: Factory, pg_settings: Settings, fake: FakeAnthropic, pg_db_url: str
) -> None:
    apps = [await gateway_factory(pg_settings), await gateway_factory(pg_settings)]
    clients, turns_each = 16, 2

    async def client(n: int) -> None:
        ws = await apps[n % 2].ws()
        session_id = (await chat(ws, f"client {n} says hello"))[0]["sessionId"]
        for turn in range(1, turns_each):
            # Alternate processes within one session too.
            other = await apps[(n + turn) % 2].ws()
            assert (await chat(other, f"client {n} turn {turn}", sessionId=session_id))[-1]["type"] == (
                "chat.stream.end"
            )
            await other.close()
        await ws.close()

    # Every first turn finishes at about the same time: concurrent first inserts of one calibration row, and of
    # one usage_daily row, from two processes.
    await asyncio.gather(*(client(n) for n in range(clients)))
    turns = clients * turns_each

    count, distinct_ids, distinct_messages, complete = (
        await rows(
            pg_db_url,
            "SELECT count(*), count(DISTINCT id), count(DISTINCT message_id),"
            " sum(CASE WHEN status = 'complete' THEN 1 ELSE 0 END) FROM usage_records",
        )
    )[0]
    assert (count, distinct_ids, distinct_messages, complete) == (turns, turns, turns, turns)
    assert await scalar(pg_db_url, "SELECT samples FROM token_calibration") == turns
    assert await scalar(pg_db_url, "SELECT count(*) FROM messages WHERE status = 'complete'") == 2 * turns

    sums = (
        await rows(
            pg_db_url,
            "SELECT sum(input_tokens), sum(output_tokens), sum(total_cost) FROM usage_records",
        )
    )[0]
    reports = []
    for app in apps:
        ws = await app.ws()
        reports.append(await request(ws, {"type": "usage.query"}))
        await ws.close()
    assert reports[0]["grandTotal"] == reports[1]["grandTotal"]
    total = reports[0]["grandTotal"]
    assert (total["requestCount"], total["inputTokens"], total["outputTokens"]) == (turns, sums[0], sums[1])
    assert abs(total["totalCost"] - int(sums[2]) / 1e9) < 1e-12


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def test_simultaneous_starts_migrate_a_fresh_database_once(
    gateway_factory: Factory, fake: FakeAnthropic, fresh_pg_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "AGENTSPACE_DB_URL": fresh_pg_url}
    # Two `alembic upgrade head` processes and three gateway start-ups, all at once, on an empty database.
    clis = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "alembic",
            "upgrade",
            "head",
            cwd=REPO,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    settings = make_settings(tmp_path / "home", fake, fresh_pg_url)
    gateways = await asyncio.gather(*(gateway_factory(settings) for _ in range(3)))
    for cli in clis:
        _, err = await cli.communicate()
        assert cli.returncode == 0, err.decode()

    assert await rows(fresh_pg_url, "SELECT version_num FROM alembic_version") == [(_head(),)]
    for gateway in gateways:
        ws = await gateway.ws()
        assert (await chat(ws, "hello"))[-1]["type"] == "chat.stream.end"
        await ws.close()
    assert await scalar(fresh_pg_url, "SELECT request_count FROM usage_by_model") == 3


async def test_database_outage_gives_retryable_errors_and_recovers(
    gateway_factory: Factory, fake: FakeAnthropic, pg_db_url: str, tmp_path: Path
) -> None:
    url = make_url(pg_db_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    try:
        through_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        gateway = await gateway_factory(make_settings(tmp_path / "home", fake, through_proxy))
        ws = await gateway.ws()
        session_id = (await chat(ws, "before"))[0]["sessionId"]

        await proxy.cut()  # the server is gone: open connections reset, new ones refused
        refused = await chat(ws, "during", id="d1", sessionId=session_id)
        assert [(f["type"], f["code"], f["retryable"]) for f in refused] == [("error", "DATABASE_UNAVAILABLE", True)]
        listed = await request(ws, {"type": "session.list", "id": "l1"})
        assert (listed["code"], listed["retryable"]) == ("DATABASE_UNAVAILABLE", True)
        new_session = await chat(ws, "a new chat", id="d2")
        assert new_session[-1]["code"] == "DATABASE_UNAVAILABLE"

        await proxy.restore()
        frames = await chat(ws, "after", id="a1", sessionId=session_id)
        assert frames[-1]["type"] == "chat.stream.end"
        history = await request(ws, {"type": "session.history", "sessionId": session_id})
        assert [m["text"] for m in history["messages"] if m["role"] == "user"] == ["before", "after"]

        # A reply that finishes while the database is away is saved once it is back, usage row and all.
        save_failed = _on_log("saving a finished reply failed")
        await start_held(ws, fake, 1, id="h1", sessionId=session_id)
        await proxy.cut()
        fake.release()
        await save_failed.wait()
        await proxy.restore()
        end = (await collect(ws))[-1]
        assert (end["type"], end["status"], end["id"]) == ("chat.stream.end", "complete", "h1")
        assert await scalar(pg_db_url, "SELECT count(*) FROM usage_records") == 3
        assert await scalar(pg_db_url, "SELECT samples FROM token_calibration") == 3
    finally:
        await proxy.close()
