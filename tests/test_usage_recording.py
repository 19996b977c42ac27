"""What lands in `usage_records` and the end frame for each way a stream can go, through the real SDK and the fake.

Hand-computed numbers use Sonnet 5.5's rates in force now (input $2, output $10, 5m write $2.50, 1h write $4,
read $0.10 per million tokens, i.e. 2000, 10000, 2500, 4000 and 100 nano-USD per token).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientWebSocketResponse

from gateway.context.tokens import TokenCounter
from gateway.server.handlers import CONNECTIONS
from gateway.settings import Settings
from tests.conftest import Gateway, chat, collect, recv, request, send
from tests.fake_anthropic import FakeAnthropic, Reply
from tests.sql import calibrate_output, sql_rows

GatewayFactory = Callable[[Settings], Awaitable[Gateway]]


async def usage_rows(db_url: str) -> list[dict[str, Any]]:
    """The usage rows as the database holds them, read with plain SQL (on SQLite or PostgreSQL alike)."""
    return await sql_rows(db_url, "select * from usage_records order by created_at, id")


def generated(*parts: str) -> int:
    """What the gateway counts for a stream cut short with no calibration yet: the tokens of what it generated."""
    return TokenCounter().count("".join(parts))


async def turn_finished(gateway: Gateway) -> None:
    """Wait until the server side of every turn has saved its reply and usage (an event, not a sleep)."""
    tasks = [c.turn_task for c in gateway.app[CONNECTIONS] if c.turn_task is not None]
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


async def test_every_token_type_in_end_frame_and_row(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    fake.queue(
        Reply(input_tokens=1000, output_tokens=500, cache_creation_5m=2000, cache_creation_1h=3000, cache_read=10_000)
    )
    end = (await chat(ws, "every kind of token"))[-1]
    assert end["usage"] == {
        "inputTokens": 1000,
        "outputTokens": 500,
        "cacheCreationInputTokens": 5000,
        "cacheReadInputTokens": 10_000,
        "cacheCreation5mInputTokens": 2000,
        "cacheCreation1hInputTokens": 3000,
        "totalTokens": 16_500,  # input + output + cache writes + cache reads
    }
    # 1000x2000 + 500x10000 + (2000x2500 + 3000x4000) + 10000x100 = 2M + 5M + 17M + 1M nano-USD.
    # Uncached: 16,000 prompt tokens x 2000 + 5M = 37M, so caching saved 12M.
    assert end["cost"] == {
        "inputCost": 0.002,
        "outputCost": 0.005,
        "cacheCost": 0.018,
        "cacheWriteCost": 0.017,
        "cacheReadCost": 0.001,
        "totalCost": 0.025,
        "savedCost": 0.012,
        "serverToolCost": 0.0,
        "priced": True,
    }
    [row] = await usage_rows(settings.db_url)
    assert row["session_id"] == end["sessionId"] and row["message_id"] == end["messageId"]
    assert row["status"] == "complete" and row["model"] == "claude-sonnet-5-5" and row["agent_id"] == "default"
    assert row["upstream_message_id"].startswith("msg_")
    tokens = ("input_tokens", "output_tokens", "cache_write_5m_tokens", "cache_write_1h_tokens", "cache_read_tokens")
    assert [row[k] for k in tokens] == [1000, 500, 2000, 3000, 10_000]
    costs = ("input_cost", "output_cost", "cache_write_cost", "cache_read_cost", "total_cost", "uncached_cost")
    assert [row[k] for k in costs] == [2_000_000, 5_000_000, 17_000_000, 1_000_000, 25_000_000, 37_000_000]
    # The rates it was priced with stay on the row.
    rates = ("rate_input", "rate_output", "rate_cache_write_5m", "rate_cache_write_1h", "rate_cache_read")
    assert [row[k] for k in rates] == [2000, 10_000, 2500, 4000, 100]
    assert row["price_source"].startswith("builtin") and row["price_tier"] is None
    # docs/SQL.md's audit query: every priced row's cost follows from its own tokens and rates.
    audit = await sql_rows(
        settings.db_url,
        "SELECT COUNT(*) AS wrong FROM usage_records WHERE total_cost IS NOT NULL AND total_cost <>"
        " input_tokens * rate_input + output_tokens * rate_output + cache_write_5m_tokens * rate_cache_write_5m"
        " + cache_write_1h_tokens * rate_cache_write_1h + cache_read_tokens * rate_cache_read"
        " + COALESCE(server_tool_cost, 0)",
    )
    assert audit == [{"wrong": 0}]


async def test_a_usage_row_keeps_when_the_first_token_came(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    """docs/SQL.md's `first_token_ms`: the fake waits 50 ms before each event, so the first token comes after at least
    that, and the reply's last token at least 50 ms later still."""
    fake.queue(Reply(text="one two", delay_s=0.05, input_tokens=10, output_tokens=5))
    assert (await chat(ws, "how quick?"))[-1]["type"] == "chat.stream.end"
    [row] = await usage_rows(settings.db_url)
    assert row["first_token_ms"] is not None
    assert 50 <= row["first_token_ms"] <= row["duration_ms"] - 50


async def test_tier_switch_applies_to_the_whole_request(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    # Haiku 5.5: 100,000 prompt tokens is base price ($0.10/$0.50), 100,001 (cache tokens included) the >100K tier.
    fake.queue(
        Reply(input_tokens=90_000, cache_read=10_000, output_tokens=10),
        Reply(input_tokens=90_000, cache_read=10_001, output_tokens=10),
    )
    base = (await chat(ws, "at the edge", model="claude-haiku-5-5"))[-1]
    above = (await chat(ws, "one over", model="claude-haiku-5-5"))[-1]
    # 90,000x100 + 10,000x10 + 10x500 = 9,105,000 nano; above: 90,000x500 + 10,001x50 + 10x2500 = 45,525,050.
    assert base["cost"]["totalCost"] == 0.009105
    assert above["cost"]["totalCost"] == 0.04552505
    rows = await usage_rows(settings.db_url)
    assert [(r["price_tier"], r["rate_input"], r["total_cost"]) for r in rows] == [
        (None, 100, 9_105_000),
        ("prompt>100000", 500, 45_525_050),
    ]


async def test_price_change_never_rewrites_history(
    gateway_factory: GatewayFactory, settings: Settings, fake: FakeAnthropic
) -> None:
    fake.queue(Reply(input_tokens=1000, output_tokens=100), Reply(input_tokens=1000, output_tokens=100))
    first = await gateway_factory(settings)
    ws1 = await first.ws()
    await chat(ws1, "at the old price")
    await ws1.close()
    await first.client.close()
    # The user doubles Sonnet 5.5's prices in their own file; only requests from now on use them.
    settings.prices_path.parent.mkdir(parents=True, exist_ok=True)
    settings.prices_path.write_text(
        '[[models]]\nid = "claude-sonnet-5-5"\n[[models.periods]]\neffective_from = 1970-01-01\n'
        "input = 4\noutput = 20\ncache_write_5m = 5\ncache_write_1h = 8\ncache_read = 0.20\n"
    )
    second = await gateway_factory(settings)
    ws2 = await second.ws()
    await chat(ws2, "at the new price")
    rows = await usage_rows(settings.db_url)
    assert [(r["rate_input"], r["rate_output"], r["total_cost"]) for r in rows] == [
        (2000, 10_000, 3_000_000),
        (4000, 20_000, 6_000_000),
    ]
    assert rows[1]["price_source"] == str(settings.prices_path)
    report = await request(ws2, {"type": "usage.query"})
    assert report["grandTotal"]["totalCostNanoUsd"] == 9_000_000
    await ws2.close()


async def test_unknown_model_is_counted_but_never_priced(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    fake.queue(Reply(input_tokens=1000, output_tokens=100), Reply(input_tokens=5000, output_tokens=50))
    await chat(ws, "priced")
    end = (await chat(ws, "mystery", model="claude-experimental-9"))[-1]
    assert end["usage"]["inputTokens"] == 5000
    assert end["cost"] == {
        "inputCost": None,
        "outputCost": None,
        "cacheCost": None,
        "cacheWriteCost": None,
        "cacheReadCost": None,
        "totalCost": None,
        "savedCost": None,
        "serverToolCost": None,
        "priced": False,
    }
    unknown = (await usage_rows(settings.db_url))[1]
    assert (unknown["input_tokens"], unknown["output_tokens"]) == (5000, 50)
    assert unknown["total_cost"] is None and unknown["rate_input"] is None and unknown["price_source"] is None
    report = await request(ws, {"type": "usage.query"})
    assert report["unpricedRequests"] == 1
    assert report["grandTotal"]["requestCount"] == 2 and report["grandTotal"]["unpricedRequests"] == 1
    # The total covers the priced request only, and says so through unpricedRequests.
    assert report["grandTotal"]["totalCostNanoUsd"] == 3_000_000
    assert report["grandTotal"]["inputTokens"] == 6000
    assert report["perModel"]["claude-experimental-9"]["totalCost"] == 0.0


async def test_cancelled_stream_records_usage_so_far(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    fake.queue(
        Reply(
            text="one two three four five",
            hold_after_deltas=2,
            input_tokens=800,
            cache_read=2000,
            output_tokens_before_error=7,
        )
    )
    await send(ws, {"type": "chat.send", "id": "s", "content": "long answer please"})
    session_id = (await recv(ws))["sessionId"]
    await fake.wait_held()
    await send(ws, {"type": "chat.cancel", "id": "c", "sessionId": session_id})
    frames = await collect(ws, until=("chat.cancelled",))
    end = next(f for f in frames if f["type"] == "chat.stream.end")
    assert end["status"] == "cancelled"
    # What the upstream reported so far: message_start's counts (the output tokens it had counted then).
    assert end["usage"]["inputTokens"] == 800 and end["usage"]["cacheReadInputTokens"] == 2000
    assert end["usage"]["outputTokens"] == 7
    assert end["cost"]["totalCost"] == (800 * 2000 + 2000 * 100 + 7 * 10_000) / 1e9
    [row] = await usage_rows(settings.db_url)
    assert (row["status"], row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (
        "cancelled",
        800,
        7,
        2000,
    )
    assert row["total_cost"] == 800 * 2000 + 2000 * 100 + 7 * 10_000


async def test_stream_failing_midway_records_usage_as_failed(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    fake.queue(Reply(text="a b c d", error_after_deltas=2, input_tokens=300, output_tokens_before_error=4))
    frames = await chat(ws, "this will break")
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "OVERLOADED"
    assert frames[-1]["partialText"] == "a b "
    [row] = await usage_rows(settings.db_url)
    # Anthropic reported 4 by then; it bills what it generated: our count of it, marked estimated (chat/spend.py).
    out = generated("Thinking it over.", "a b ")
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == ("failed", 300, out)
    assert (bool(row["estimated"]), row["estimated_output_tokens"]) == (True, out - 4)
    assert row["total_cost"] == 300 * 2000 + out * 10_000
    assert row["estimated_cost"] == (out - 4) * 10_000
    report = await request(ws, {"type": "usage.query"})
    assert report["grandTotal"]["requestCount"] == 1
    assert report["grandTotal"]["totalCostNanoUsd"] == row["total_cost"]


async def test_client_disconnect_records_usage_as_disconnected(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings
) -> None:
    fake.queue(Reply(text="one two three four", hold_after_deltas=1, input_tokens=400, output_tokens_before_error=3))
    ws = await gateway.ws()
    await send(ws, {"type": "chat.send", "id": "s", "content": "are you there?"})
    await fake.wait_held()
    await ws.close()
    assert await fake.wait_stream_closed()  # the gateway stopped paying for a reply nobody reads
    await turn_finished(gateway)
    [row] = await usage_rows(settings.db_url)
    out = generated("Thinking it over.", "one ")
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == ("disconnected", 400, out)
    assert (bool(row["estimated"]), row["estimated_output_tokens"]) == (True, out - 3)
    assert row["total_cost"] == 400 * 2000 + out * 10_000


async def test_disconnect_with_finish_records_the_whole_reply(
    gateway_factory: GatewayFactory, settings: Settings, fake: FakeAnthropic
) -> None:
    gateway = await gateway_factory(settings.with_overrides(on_disconnect="finish"))
    fake.queue(Reply(text="one two three four", hold_after_deltas=1, input_tokens=400, output_tokens=60))
    ws = await gateway.ws()
    await send(ws, {"type": "chat.send", "id": "s", "content": "finish without me"})
    await fake.wait_held()
    await ws.close()
    fake.release()
    await turn_finished(gateway)
    [row] = await usage_rows(settings.db_url)
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == ("complete", 400, 60)


async def test_shutdown_mid_stream_records_usage_as_interrupted(
    gateway_factory: GatewayFactory, settings: Settings, fake: FakeAnthropic
) -> None:
    gateway = await gateway_factory(settings)
    fake.queue(Reply(text="one two three", hold_after_deltas=1, input_tokens=250, output_tokens_before_error=2))
    ws = await gateway.ws()
    await send(ws, {"type": "chat.send", "id": "s", "content": "stopping soon"})
    await fake.wait_held()
    await gateway.client.server.close()  # what SIGTERM does: shutdown first, sockets closed after
    [row] = await usage_rows(settings.db_url)
    out = generated("Thinking it over.", "one ")
    assert (row["status"], row["input_tokens"], row["output_tokens"], bool(row["estimated"])) == (
        "interrupted", 250, out, True)  # fmt: skip


async def test_one_row_per_upstream_request_across_retries(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    # 1: refused with 529 before any message (nothing billed, no row); 2: message_start then an overloaded error
    # before any token (billed for its input, a `failed` row); 3: the retry that succeeds.
    fake.queue(
        Reply(status=529),
        Reply(
            thinking=None,
            error_after_deltas=0,
            input_tokens=120,
            output_tokens_before_error=1,
            server_tool_use={"web_search_requests": 1},
        ),
        Reply(text="finally", input_tokens=120, output_tokens=9),
    )
    end = (await chat(ws, "third time lucky"))[-1]
    assert end["type"] == "chat.stream.end" and end["status"] == "complete"
    assert len(fake.requests) == 3
    rows = await usage_rows(settings.db_url)
    assert [(r["status"], r["input_tokens"], r["output_tokens"]) for r in rows] == [
        ("failed", 120, 1),
        ("complete", 120, 9),
    ]
    assert len({r["id"] for r in rows}) == 2
    # Each row names its own upstream message, belongs to step 1, and keeps the web searches it was billed for.
    assert [r["upstream_message_id"][:4] for r in rows] == ["msg_", "msg_"]
    assert rows[0]["upstream_message_id"] != rows[1]["upstream_message_id"]
    assert [(r["step"], r["web_search_requests"]) for r in rows] == [(1, 1), (1, 0)]
    # The failed attempt's search is billed with it ($10 per 1,000 searches), in its row's total.
    assert [r["server_tool_cost"] for r in rows] == [10_000_000, 0]
    assert rows[0]["total_cost"] == rows[0]["input_cost"] + rows[0]["output_cost"] + 10_000_000
    # Both durations count from the turn's first request; the failed attempt ended after a backoff of at least 5 ms.
    assert 5 <= rows[0]["duration_ms"] <= rows[1]["duration_ms"]
    report = await request(ws, {"type": "usage.query"})
    assert report["grandTotal"]["requestCount"] == 2
    # The end frame sums every request of the turn, the billed failed attempt too: it equals the rows.
    assert end["usage"]["outputTokens"] == 10
    assert (end["requests"], end["steps"]) == (2, 1)


async def _retried_after_a_tool_call_cut_short(ws: ClientWebSocketResponse, fake: FakeAnthropic) -> None:
    """A turn whose first attempt fails (Anthropic's count at 1) after streaming part of a tool call's input, which
    this client does not see, so it is retried and the retry completes."""
    call = {"type": "tool_use", "id": "toolu_cut", "name": "get_weather", "input": {"city": "Reykjavik, Iceland"}}
    fake.queue(
        Reply(thinking=None, blocks=[call], error_after_block_events=4, input_tokens=120, output_tokens_before_error=1),
        Reply(text="finally", input_tokens=120, output_tokens=9),
    )
    end = (await chat(ws, "weather?"))[-1]
    assert (end["type"], end["requests"]) == ("chat.stream.end", 2)


async def test_a_retried_attempt_cut_short_in_a_tool_call_is_billed_as_estimated(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    """The first attempt streams part of a tool call's input (which this client does not see, so it is retried) and
    fails with Anthropic's count at 1: its row bills what it generated, our count, and says it is an estimate."""
    await _retried_after_a_tool_call_cut_short(ws, fake)
    failed, complete = await usage_rows(settings.db_url)
    out = generated('{"city":"Reykjavik, Ic')  # the three input pieces streamed before the error
    assert out > 1
    assert (failed["status"], failed["output_tokens"], bool(failed["estimated"])) == ("failed", out, True)
    assert (failed["estimated_output_tokens"], failed["estimated_cost"]) == (out - 1, (out - 1) * 10_000)
    assert failed["total_cost"] == 120 * 2000 + out * 10_000
    assert (complete["status"], bool(complete["estimated"])) == ("complete", False)


async def test_a_retried_attempt_cut_short_is_billed_calibrated_per_model(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    """The failed attempt's estimate is scaled like a stopped reply's, by what Anthropic counted for this model."""
    # Anthropic has counted 3 tokens for every 2 of ours in this model's complete replies.
    await calibrate_output(settings.db_url, "claude-sonnet-5-5", estimated=2000, reported=3000)
    await _retried_after_a_tool_call_cut_short(ws, fake)
    failed, _ = await usage_rows(settings.db_url)
    out = -(-generated('{"city":"Reykjavik, Ic') * 3 // 2)
    assert (failed["status"], failed["output_tokens"], failed["estimated_output_tokens"]) == ("failed", out, out - 1)
    assert failed["total_cost"] == 120 * 2000 + out * 10_000


async def test_cancel_during_retry_backoff_does_not_count_the_attempt_twice(
    gateway_factory: GatewayFactory, settings: Settings, fake: FakeAnthropic
) -> None:
    slow = settings.with_overrides(upstream_retry_base_s=60.0, upstream_retry_max_s=60.0)
    gateway = await gateway_factory(slow)
    ws = await gateway.ws()
    fake.queue(Reply(thinking=None, error_after_deltas=0, input_tokens=120, output_tokens_before_error=1))
    await send(ws, {"type": "chat.send", "id": "s", "content": "retry me"})
    session_id = (await recv(ws))["sessionId"]
    await fake.wait_stream_closed(1)
    await send(ws, {"type": "chat.cancel", "id": "c", "sessionId": session_id})
    await collect(ws, until=("chat.cancelled",))
    assert len(fake.requests) == 1
    rows = await usage_rows(settings.db_url)
    assert len(rows) == 1 and rows[0]["input_tokens"] == 120
    await ws.close()


async def test_idempotent_resend_never_double_counts(
    gateway: Gateway, ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    fake.queue(Reply(text="one two three", hold_after_deltas=1, input_tokens=100, output_tokens=10))
    await send(ws, {"type": "chat.send", "id": "a", "content": "count me once", "idempotencyKey": "k-1"})
    await fake.wait_held()
    # The client lost track and resends on another connection while the first is still streaming...
    other = await gateway.ws()
    during = await chat(other, "count me once", id="b", idempotencyKey="k-1")
    assert [f["type"] for f in during] == ["chat.state"] and during[0]["status"] == "streaming"
    fake.release()
    first = await collect(ws)
    assert first[-1]["type"] == "chat.stream.end"
    # ...and once more after it finished.
    after = await chat(other, "count me once", id="c", idempotencyKey="k-1")
    assert after[0]["type"] == "chat.state" and after[0]["status"] == "complete"
    assert len(fake.requests) == 1
    assert len(await usage_rows(settings.db_url)) == 1
    report = await request(other, {"type": "usage.query"})
    assert report["grandTotal"]["requestCount"] == 1 and report["grandTotal"]["inputTokens"] == 100
    await other.close()


async def test_simultaneous_resends_make_one_upstream_request(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings
) -> None:
    fake.queue(Reply(text="only once", hold_after_deltas=1, input_tokens=100, output_tokens=10))
    a, b = await gateway.ws(), await gateway.ws()
    frame = {"type": "chat.send", "content": "count me once", "idempotencyKey": "race-1"}
    await asyncio.gather(send(a, {**frame, "id": "a"}), send(b, {**frame, "id": "b"}))
    await fake.wait_held()
    fake.release()
    ends = sorted(f[-1]["type"] for f in await asyncio.gather(collect(a), collect(b)))
    # Whichever arrived second learns the first's state; neither double counts.
    assert ends == ["chat.state", "chat.stream.end"]
    assert len(fake.requests) == 1
    assert len(await usage_rows(settings.db_url)) == 1
    await a.close()
    await b.close()


def test_the_usage_row_a_turn_builds_has_every_column_of_usage_records() -> None:
    """A turn writes its usage as a plain UsageRow (not the ORM's UsageRecord): a column missing from it would never be
    written, and one it has beyond the table's would fail every insert."""
    from dataclasses import MISSING, fields

    from gateway.store.models import UsageRecord
    from gateway.store.usage_row import UsageRow

    table = UsageRecord.__table__.columns
    assert [f.name for f in fields(UsageRow)] and {f.name for f in fields(UsageRow)} == set(table.keys())
    for f in fields(UsageRow):
        default = table[f.name].default
        if default is not None and default.is_scalar:
            assert f.default == default.arg, f.name  # the same value as a row the ORM would have defaulted
        elif f.default is not MISSING:
            assert f.default is None or table[f.name].nullable, f.name
