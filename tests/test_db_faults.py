"""Database faults (issue 14): a read-only, full or failing database is DATABASE_UNAVAILABLE (retryable) for new work,
and a reply that finished streaming during the outage is held and saved, text and usage, when the database is back.
Measured before: with the database files made immutable mid-stream, a stream that relayed all its deltas ended in
INTERNAL_ERROR and its reply was left with 0 characters and no usage row; new sends got INTERNAL_ERROR."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import OperationalError

from gateway.chat import held, turn_end
from gateway.client.types import ChatEnd
from gateway.errors import DatabaseUnavailable
from gateway.server.handlers import SERVICES
from gateway.settings import Settings
from gateway.store.db import is_connectivity_error
from tests.conftest import Gateway, chat, collect, deltas, make_settings, request, send
from tests.fake_anthropic import FakeAnthropic, Reply

Factory = Callable[[Settings], Awaitable[Gateway]]


def _real_sqlite_error(tmp_path: Path, setup: str, statement: str, *, uri: str | None = None) -> OperationalError:
    path = tmp_path / "probe.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS t (x TEXT)")
    connection = sqlite3.connect(uri or path, uri=uri is not None)
    try:
        if setup:
            connection.execute(setup)
        connection.execute(statement)
        connection.commit()
    except sqlite3.OperationalError as exc:
        return OperationalError(statement, {}, exc)
    finally:
        connection.close()
    raise AssertionError(f"{statement} did not fail")


def test_read_only_and_full_sqlite_databases_are_unavailable_not_bugs(tmp_path: Path) -> None:
    read_only = _real_sqlite_error(tmp_path, "", "INSERT INTO t VALUES ('x')", uri=f"file:{tmp_path}/probe.db?mode=ro")
    assert "readonly" in str(read_only) and is_connectivity_error(read_only)
    page_count = sqlite3.connect(tmp_path / "probe.db").execute("PRAGMA page_count").fetchone()[0]
    full = _real_sqlite_error(
        tmp_path, f"PRAGMA max_page_count={page_count}", "INSERT INTO t VALUES (randomblob(99999))"
    )
    assert "full" in str(full) and is_connectivity_error(full)
    syntax = _real_sqlite_error(tmp_path, "", "INSERT INTO nowhere VALUES (1)")
    assert not is_connectivity_error(syntax)  # a bug in the SQL stays a bug


class _PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize(
    ("sqlstate", "unavailable"), [("53100", True), ("58030", True), ("25006", True), ("42P01", False)]
)
def test_postgres_disk_full_io_error_and_read_only_are_unavailable(sqlstate: str, unavailable: bool) -> None:
    """disk_full, io_error, read_only_sql_transaction (a standby mid-failover); undefined_table is a bug."""
    assert is_connectivity_error(OperationalError("x", {}, _PgError(sqlstate))) is unavailable


def _chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@pytest.fixture
def frozen_files(tmp_path: Path) -> Iterator[Callable[[bool], None]]:
    """Make the database files immutable (and back), as the red team did. Not the -shm file: SQLite maps it into
    memory, and writing to a map of an immutable file kills the process with SIGBUS (see docs/SECURITY.md)."""
    probe = tmp_path / "chattr-probe"
    probe.touch()
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    try:
        _chattr("+i", probe)
        _chattr("-i", probe)
    except (subprocess.CalledProcessError, OSError):
        pytest.skip("this filesystem or user cannot make files immutable")
    files = [tmp_path / "gateway.db", tmp_path / "gateway.db-wal"]

    def freeze(on: bool) -> None:
        _chattr("+i" if on else "-i", *[f for f in files if f.exists()])

    yield freeze
    freeze(False)


async def _eventually(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(30):
        while not predicate():  # noqa: ASYNC110 - a background save has no event a test can wait on
            await asyncio.sleep(0.02)


async def test_a_reply_finished_during_an_outage_is_held_and_saved_when_the_database_is_back(
    gateway_factory: Factory,
    tmp_path: Path,
    fake: FakeAnthropic,
    frozen_files: Callable[[bool], None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(turn_end, "FINISH_RETRY_DELAYS_S", (0.05, 0.05))  # then held, instead of after ~16 s
    monkeypatch.setattr(held, "RETRY_FIRST_S", 0.05)
    monkeypatch.setattr(held, "RETRY_MAX_S", 0.1)
    settings = make_settings(tmp_path / "home", fake, f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    gateway = await gateway_factory(settings.with_overrides(checkpoint_interval_s=0))
    services = gateway.app[SERVICES]
    ws = await gateway.ws()
    text = " ".join(f"word{n}" for n in range(60))
    fake.queue(Reply(text=text, thinking=None, hold_after_deltas=5))
    await send(ws, {"type": "chat.send", "id": "during", "content": "hello"})
    await fake.wait_held()
    frozen_files(True)
    fake.release()
    frames = await collect(ws)
    end = frames[-1]
    assert (end["type"], end["status"], end["pendingSave"]) == ("chat.stream.end", "complete", True)
    assert deltas(frames) == text
    session_id = end["sessionId"]

    refused = (await chat(ws, "a new session", id="new"))[-1]
    assert (refused["code"], refused["retryable"]) == ("DATABASE_UNAVAILABLE", True)
    busy = (await chat(ws, "next", id="busy", sessionId=session_id))[-1]
    assert (busy["code"], busy["retryable"]) == ("STREAM_IN_PROGRESS", True)  # until its reply is saved

    frozen_files(False)
    await _eventually(lambda: services.held.count == 0)
    with sqlite3.connect(tmp_path / "gateway.db") as db:
        saved = db.execute("SELECT status, text FROM messages WHERE role = 'assistant'").fetchall()
        usage = db.execute("SELECT status, output_tokens FROM usage_records").fetchall()
    assert saved == [("complete", text)]
    assert usage == [("complete", 60)]
    history = await request(ws, {"type": "session.history", "id": "h", "sessionId": session_id})
    assert [m["text"] for m in history["messages"]] == ["hello", text]
    assert (await chat(ws, "and now?", id="after", sessionId=session_id))[-1]["type"] == "chat.stream.end"


async def test_held_replies_get_a_last_try_at_shutdown(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save the database refuses past the retries is held; at shutdown it is tried once more, and saved if it can."""
    monkeypatch.setattr(turn_end, "FINISH_RETRY_DELAYS_S", ())
    monkeypatch.setattr(held, "RETRY_FIRST_S", 60.0)  # no retry before the shutdown
    gateway = await gateway_factory(settings)
    services = gateway.app[SERVICES]
    real_finish = services.store.chats.finish_turn
    failing = {"on": True}

    async def finish_turn(**fields: Any) -> None:
        if failing["on"]:
            raise DatabaseUnavailable("database unavailable: test")
        await real_finish(**fields)

    monkeypatch.setattr(services.store.chats, "finish_turn", finish_turn)
    ws = await gateway.ws()
    end = (await chat(ws, "hello"))[-1]
    assert end["pendingSave"] is True and services.held.count == 1
    # Held, not lost: the end frame still reports what the reply used and cost.
    assert end["usage"]["outputTokens"] > 0 and end["cost"]["totalCost"] > 0
    assert ChatEnd.from_frame(end).pending_save is True
    failing["on"] = False
    await services.held.close()
    assert services.held.count == 0
    history = await request(ws, {"type": "session.history", "id": "h", "sessionId": end["sessionId"]})
    assert history["messages"][-1]["status"] == "complete"
