"""`agentspace db copy`: a SQLite deployment moved to another database (PostgreSQL when available, SQLite always)
answers exactly as before: the same sessions, history, usage report, and conversations carry on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from gateway.settings import Settings
from tests.conftest import PG_SKIP_REASON, Gateway, chat, make_settings, pg_url, request
from tests.databases import create_database, drop_database, rows
from tests.fake_anthropic import FakeAnthropic, Reply

Factory = Callable[[Settings], Awaitable[Gateway]]


@pytest.fixture(params=["sqlite", "postgresql"])
async def target_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'target.db'}"
        return
    admin = pg_url()
    if admin is None:
        pytest.skip(PG_SKIP_REASON)
    url = await create_database(admin, migrate=False)
    yield url
    await drop_database(admin, url)


async def snapshot(gateway: Gateway, session_ids: list[str]) -> dict[str, Any]:
    """What a user sees: the session list, every history, the usage report by model and by day."""
    ws = await gateway.ws()
    seen: dict[str, Any] = {"sessions": (await request(ws, {"type": "session.list"}))["sessions"]}
    for sid in session_ids:
        seen[sid] = (await request(ws, {"type": "session.history", "sessionId": sid}))["messages"]
    for group in ("model", "day"):
        report = await request(ws, {"type": "usage.query", "groupBy": group})
        seen[f"usage by {group}"] = {k: v for k, v in report.items() if k not in ("id", "generatedAt")}
    await ws.close()
    return seen


async def copy(*args: str) -> int:
    # main() runs its own event loop, as from a shell; a thread keeps it off this test's loop.
    return await asyncio.to_thread(main, ["db", "copy", *args])


async def test_copy_keeps_everything_and_refuses_a_full_target(
    gateway_factory: Factory, fake: FakeAnthropic, tmp_path: Path, target_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source_url = f"sqlite+aiosqlite:///{tmp_path / 'source.db'}"
    source = await gateway_factory(make_settings(tmp_path / "home", fake, source_url))
    ws = await source.ws()
    fake.queue(Reply(input_tokens=1200, output_tokens=300, cache_read=5000, cache_creation_5m=700))
    first = (await chat(ws, "remember the number 42", idempotencyKey="k-1"))[0]["sessionId"]
    await chat(ws, "and 43", sessionId=first)
    second = (await chat(ws, "Üñíçødé and emoji 🚀", model="claude-opus-5-5"))[0]["sessionId"]
    await chat(ws, "nobody prices this model", model="claude-experimental-9")
    await ws.close()
    session_ids = [first, second]
    before = await snapshot(source, session_ids)

    assert await copy("--from", source_url, "--to", target_url, "--batch-size", "2") == 0
    out = capsys.readouterr().out
    assert "messages                    8 rows" in out and "usage_records               4 rows" in out
    assert "verified" in out

    target = await gateway_factory(make_settings(tmp_path / "home", fake, target_url))
    assert await snapshot(target, session_ids) == before
    # The rollup was rebuilt by the target's own triggers, and agrees with the usage rows.
    assert await rows(target_url, "SELECT sum(request_count) FROM usage_daily") == [(4,)]
    # The conversation carries on where it was, with its history, on the new database.
    ws = await target.ws()
    assert (await chat(ws, "which numbers?", sessionId=first))[-1]["type"] == "chat.stream.end"
    sent = fake.requests[-1].body["messages"]
    assert sent[0]["content"][0]["text"] == "remember the number 42" and len(sent) == 5
    # The idempotency key came along: a resend is answered from the copy, not sent upstream again.
    calls = len(fake.requests)
    [state] = await chat(ws, "remember the number 42", idempotencyKey="k-1")
    assert (state["type"], state["duplicate"], state["sessionId"], state["status"]) == (
        "chat.state",
        True,
        first,
        "complete",
    )
    assert len(fake.requests) == calls
    await ws.close()

    # Now the target holds rows: refused without --force, and left as it was.
    assert await copy("--from", source_url, "--to", target_url) == 1
    assert "already holds rows" in capsys.readouterr().err
    assert await rows(target_url, "SELECT count(*) FROM usage_records") == [(5,)]
    # --force replaces them with the source's, not on top of them.
    assert await copy("--from", source_url, "--to", target_url, "--force") == 0
    assert await rows(target_url, "SELECT count(*) FROM usage_records") == [(4,)]
    assert await rows(target_url, "SELECT count(*) FROM messages") == [(8,)]
