"""No spend uncounted (chat/spend.py, docs/SQL.md): a usage row from the first upstream event, provisional and
updated by the checkpoint timer, final in place at the end; a stream cut short counts the output tokens estimated from
what it generated (calibrated per model) and says so; reports, views and `agentspace usage` show the estimated share.

Sonnet 5.5 in nano-USD per token: input 2000, output 10000.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse

from gateway.cli import main
from gateway.context.tokens import TokenCounter
from gateway.settings import Settings
from tests.conftest import Gateway, chat, collect, recv, request, send
from tests.fake_anthropic import FakeAnthropic, Reply
from tests.sql import calibrate_output, sql_rows

TEXT = "one two three four five six seven eight"
MODEL = "claude-sonnet-5-5"


def tokens(text: str) -> int:
    return TokenCounter().count(text)


async def usage(db_url: str) -> list[dict[str, Any]]:
    return await sql_rows(db_url, "SELECT * FROM usage_records ORDER BY created_at, id")


async def until_row(db_url: str, sql: str) -> dict[str, Any]:
    """Another task writes on its own schedule (the checkpoint timer): look until it has."""
    async with asyncio.timeout(10):
        while not (found := await sql_rows(db_url, sql)):  # noqa: ASYNC110 - a timer's write has no event to wait on
            await asyncio.sleep(0.02)
    return found[0]


async def held(ws: ClientWebSocketResponse, fake: FakeAnthropic, deltas: int = 3) -> str:
    """A send whose upstream holds after `deltas` text deltas (no thinking); its session id."""
    fake.queue(Reply(text=TEXT, thinking=None, hold_after_deltas=deltas, input_tokens=500))
    await send(ws, {"type": "chat.send", "id": "s1", "content": "talk to me"})
    await fake.wait_held()
    frames: list[dict[str, Any]] = []
    while len([f for f in frames if f["type"] == "chat.stream.delta"]) < deltas:
        frames.append(await recv(ws))
    session_id: str = frames[0]["sessionId"]
    return session_id


async def test_a_streaming_request_has_a_provisional_row_that_checkpoints_update(
    gateway_factory: Any, settings: Settings, fake: FakeAnthropic
) -> None:
    gateway: Gateway = await gateway_factory(settings.with_overrides(checkpoint_interval_s=0.05))
    ws = await gateway.ws()
    await held(ws, fake)
    # From the first event: counted with the input Anthropic reported; then each checkpoint adds the output so far.
    row = await until_row(
        settings.db_url, "SELECT * FROM usage_records WHERE status = 'streaming' AND estimated_output_tokens > 0"
    )
    out = tokens("one two three ")
    assert (row["input_tokens"], row["output_tokens"], bool(row["estimated"])) == (500, out, True)
    assert row["total_cost"] == 500 * 2000 + out * 10_000 and row["estimated_cost"] == (out - 1) * 10_000
    report = await request(ws, {"type": "usage.query"})
    assert report["grandTotal"]["requestCount"] == 1 and report["grandTotal"]["estimatedRequests"] == 1
    fake.release()
    end = (await collect(ws))[-1]
    assert end["type"] == "chat.stream.end"
    # Made final in place: one row, Anthropic's own final count, nothing estimated, the rollup counting it once.
    [final] = await usage(settings.db_url)
    assert (final["id"], final["status"], bool(final["estimated"])) == (row["id"], "complete", False)
    assert final["output_tokens"] == end["usage"]["outputTokens"] and final["estimated_output_tokens"] == 0
    [daily] = await sql_rows(
        settings.db_url, "SELECT request_count, output_tokens, estimated_requests FROM usage_daily"
    )
    assert daily == {"request_count": 1, "output_tokens": final["output_tokens"], "estimated_requests": 0}
    await ws.close()


async def test_a_cancelled_stream_counts_the_output_it_generated_calibrated_per_model(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    # Anthropic has counted 3 tokens for every 2 of ours in this model's complete replies.
    await calibrate_output(settings.db_url, MODEL, estimated=2000, reported=3000)
    session_id = await held(ws, fake)
    await send(ws, {"type": "chat.cancel", "id": "c1", "sessionId": session_id})
    end = await recv(ws)
    assert end["status"] == "cancelled"
    await recv(ws)  # chat.cancelled
    [row] = await usage(settings.db_url)
    out = -(-tokens("one two three ") * 3 // 2)
    assert (row["status"], row["output_tokens"], row["estimated_output_tokens"]) == ("cancelled", out, out - 1)
    assert bool(row["estimated"]) and row["estimated_cost"] == (out - 1) * 10_000
    # The end frame counts the same: the client sees what the row holds.
    assert end["usage"]["outputTokens"] == out
    assert end["cost"]["totalCost"] * 1e9 == pytest.approx(row["total_cost"])


async def test_complete_replies_calibrate_the_output_estimate(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    fake.queue(Reply(text=TEXT, thinking=None, output_tokens=30))
    assert (await chat(ws, "count me"))[-1]["type"] == "chat.stream.end"
    row = await until_row(settings.db_url, "SELECT * FROM token_calibration WHERE output_samples > 0")
    assert (row["output_samples"], row["output_estimated_tokens"], row["output_reported_tokens"]) == (
        1, tokens(TEXT), 30)  # fmt: skip


async def test_reports_views_and_the_cli_show_the_estimated_share(
    ws: ClientWebSocketResponse,
    fake: FakeAnthropic,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake.queue(Reply(text="done", thinking=None, input_tokens=100, output_tokens=10))
    assert (await chat(ws, "whole"))[-1]["type"] == "chat.stream.end"
    session_id = await held(ws, fake)
    await send(ws, {"type": "chat.cancel", "id": "c1", "sessionId": session_id})
    await collect(ws, until=("chat.cancelled",))
    rows = await usage(settings.db_url)
    estimated = sum(r["estimated_cost"] for r in rows)
    assert [bool(r["estimated"]) for r in rows] == [False, True] and estimated > 0
    grand = (await request(ws, {"type": "usage.query", "groupBy": "day"}))["grandTotal"]
    assert (grand["requestCount"], grand["estimatedRequests"], grand["estimatedCostNanoUsd"]) == (2, 1, estimated)
    assert grand["estimatedOutputTokens"] == sum(r["estimated_output_tokens"] for r in rows)
    [view] = await sql_rows(settings.db_url, "SELECT * FROM usage_by_model")
    assert (view["estimated_requests"], float(view["estimated_cost_usd"])) == (1, pytest.approx(estimated / 1e9))
    [by_session] = await sql_rows(settings.db_url, "SELECT * FROM usage_by_session WHERE session_id = :s", s=session_id)
    assert by_session["estimated_output_tokens"] == rows[1]["estimated_output_tokens"]
    monkeypatch.setenv("AGENTSPACE_HOME", str(settings.home))
    monkeypatch.setenv("AGENTSPACE_DB_URL", settings.db_url)
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["usage"]) == 0
    out = capsys.readouterr().out
    assert "of which estimated:" in out and "1 request(s) cut short" in out


async def test_a_http_api_stream_cut_short_counts_what_it_generated(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings
) -> None:
    """The HTTP API's requests have their provisional row and their estimate too (chat/passthrough.py)."""
    fake.queue(Reply(text=TEXT, thinking=None, hold_after_deltas=2, input_tokens=300))
    url = gateway.client.make_url("/v1/messages")
    body = {"model": MODEL, "max_tokens": 64, "stream": True, "messages": [{"role": "user", "content": "talk"}]}
    async with gateway.client.session.post(url, json=body, headers={"anthropic-version": "2023-06-01"}) as response:
        assert response.status == 200
        await fake.wait_held()
        provisional = await until_row(settings.db_url, "SELECT * FROM usage_records WHERE status = 'streaming'")
        assert provisional["input_tokens"] == 300
        # The app goes away mid-reply.
    assert await fake.wait_stream_closed() is True
    row = await until_row(settings.db_url, "SELECT * FROM usage_records WHERE status = 'disconnected'")
    out = tokens("one two ")
    assert (row["id"], row["output_tokens"], bool(row["estimated"])) == (provisional["id"], out, True)
    assert len(await usage(settings.db_url)) == 1


async def _final_and_provisional(gateway: Gateway, db_url: str) -> tuple[Any, Any, Any]:
    """A finished turn's ids, and a provisional and a final usage row of one more request in that session."""
    from dataclasses import replace

    from gateway.server.handlers import SERVICES
    from gateway.store.usage_row import UsageRow

    ws = await gateway.ws()
    await chat(ws, "hello")
    await ws.close()
    [reply] = await sql_rows(db_url, "SELECT id, session_id FROM messages WHERE role = 'assistant'")
    base = UsageRow(
        id="req-2", session_id=reply["session_id"], message_id=reply["id"], agent_id="default", model=MODEL,
        status="streaming", created_at=datetime.now(UTC), input_tokens=500, output_tokens=1, total_cost=1_010_000,
    )  # fmt: skip
    final = replace(base, status="complete", output_tokens=40, total_cost=1_400_000)
    return gateway.app[SERVICES].store.usage, base, final


async def _one_final_row_counted_once(db_url: str) -> None:
    [row] = await sql_rows(db_url, "SELECT status, output_tokens, total_cost FROM usage_records WHERE id = 'req-2'")
    assert (row["status"], row["output_tokens"], row["total_cost"]) == ("complete", 40, 1_400_000)
    [day] = await sql_rows(db_url, "SELECT SUM(request_count) AS n, SUM(total_cost) AS cost FROM usage_daily")
    [rows] = await sql_rows(db_url, "SELECT COUNT(*) AS n, SUM(total_cost) AS cost FROM usage_records")
    assert (day["n"], day["cost"]) == (rows["n"], rows["cost"]) == (2, rows["cost"])


@pytest.mark.parametrize("order", ["provisional first", "final first"])
async def test_a_final_usage_row_is_final_and_counted_once_whichever_write_lands_first(
    gateway: Gateway, db_url: str, order: str
) -> None:
    """The end of a request no longer waits for its provisional row's write (issue 15): the final row is one upsert.
    Whichever of the two lands first, SQL holds one final row and the rollup counts it once; a final save retried
    after an unclear commit counts nothing twice."""
    store, provisional, final = await _final_and_provisional(gateway, db_url)
    if order == "provisional first":
        await store.begin(provisional)
        await store.insert(final)
    else:
        await store.insert(final)
        await store.begin(provisional)  # arrives late: writes nothing
    await store.insert(final)  # a retry
    await _one_final_row_counted_once(db_url)


async def test_on_postgresql_a_final_row_waits_in_the_database_for_a_provisional_insert_still_uncommitted(
    pg_settings: Settings, gateway_factory: Any, pg_db_url: str
) -> None:
    """Several transactions run at once on PostgreSQL: the final row's upsert, meeting the provisional row's insert
    not yet committed, waits for it in the database and then makes the row final (it neither fails on the duplicate
    id nor leaves the row provisional)."""
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    from gateway.store.upserts import insert_usage_once

    gateway = await gateway_factory(pg_settings)
    store, provisional, final = await _final_and_provisional(gateway, pg_db_url)
    engine = create_async_engine(pg_db_url, poolclass=NullPool)
    try:
        async with engine.connect() as other:
            transaction = await other.begin()
            await other.run_sync(lambda conn: insert_usage_once(conn, provisional))
            saving = asyncio.ensure_future(store.insert(final))
            waiting = "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT%'"
            await until_row(pg_db_url, waiting)
            assert not saving.done()
            await transaction.commit()
            await saving
    finally:
        await engine.dispose()
    await _one_final_row_counted_once(pg_db_url)
