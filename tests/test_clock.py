"""The gateway at a moment the test chooses (`Settings(clock=...)`): prices, budget periods and stored timestamps all
follow its clock, and a request is priced at the moment it was sent upstream (docs/PRICING.md).

Sonnet 5.5's cache reads went from $0.20 to $0.10 per million tokens on 2026-10-07 00:00 UTC (200 -> 100 nano-USD
per token); its input is 2000 and its output 10000 nano-USD per token throughout.
"""

from __future__ import annotations

import ast
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Date

import gateway
from gateway.server.handlers import SERVICES
from gateway.settings import Settings
from gateway.store.keys import new_key
from gateway.store.models import Base, UTCDateTime
from tests.clock import SetClock, utc
from tests.conftest import Gateway, chat, collect, request, send
from tests.fake_anthropic import FakeAnthropic, Reply, tool_reply, tool_use
from tests.sql import sql_rows

Factory = Callable[[Settings], Awaitable[Gateway]]
GATEWAY = Path(gateway.__file__).parent
CHANGE = utc("2026-10-07T00:00:00")
JUST_BEFORE = CHANGE - timedelta(milliseconds=1)
# 1000 input, 10 output and 10,000 cache-read tokens.
TOKENS = {"input_tokens": 1000, "output_tokens": 10, "cache_read": 10_000}
OLD_TOTAL = 1000 * 2000 + 10 * 10_000 + 10_000 * 200  # 4,100,000 nano-USD
NEW_TOTAL = 1000 * 2000 + 10 * 10_000 + 10_000 * 100  # 3,100,000


async def _gateway(factory: Factory, settings: Settings, clock: SetClock) -> Gateway:
    return await factory(replace(settings, clock=clock))


async def usage_rows(db_url: str) -> list[dict[str, Any]]:
    return await sql_rows(
        db_url, "select status, rate_cache_read, cache_read_cost, total_cost from usage_records order by created_at"
    )


async def test_a_request_is_priced_when_it_was_sent_even_if_it_ends_after_a_price_change(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    clock = SetClock(JUST_BEFORE)
    ws = await (await _gateway(gateway_factory, settings, clock)).ws()
    # Sent a millisecond before the change; its reply is still streaming when the change comes.
    fake.queue(Reply(text="old price", hold_after_deltas=1, **TOKENS), Reply(text="new price", **TOKENS))
    await send(ws, {"type": "chat.send", "id": "a", "content": "before"})
    await fake.wait_held()
    clock.set(CHANGE + timedelta(seconds=1))
    fake.release()
    before = await collect(ws)
    after = await chat(ws, "after", id="b", sessionId=before[0]["sessionId"])
    ends = [before[-1], after[-1]]
    assert [e["type"] for e in ends] == ["chat.stream.end", "chat.stream.end"]
    assert [(e["cost"]["cacheReadCost"], e["cost"]["totalCost"]) for e in ends] == [(0.002, 0.0041), (0.001, 0.0031)]
    assert await usage_rows(settings.db_url) == [
        {"status": "complete", "rate_cache_read": 200, "cache_read_cost": 2_000_000, "total_cost": OLD_TOTAL},
        {"status": "complete", "rate_cache_read": 100, "cache_read_cost": 1_000_000, "total_cost": NEW_TOTAL},
    ]
    # Each row is dated when it was sent, so its day in reports is the day of its rates.
    report = await request(ws, {"type": "usage.query", "id": "u", "groupBy": "day"})
    assert [(g["key"], g["totalCostNanoUsd"]) for g in report["groups"]] == [
        ("2026-10-06", OLD_TOTAL),
        ("2026-10-07", NEW_TOTAL),
    ]
    # The session and its messages carry the gateway's clock too.
    assert before[0]["createdAt"].startswith("2026-10-06T23:59:59.999")
    history = await request(ws, {"type": "session.history", "sessionId": before[0]["sessionId"]})
    assert [m["createdAt"][:10] for m in history["messages"]] == ["2026-10-06"] * 2 + ["2026-10-07"] * 2
    assert history["updatedAt"].startswith("2026-10-07T00:00:01")
    await ws.close()


async def test_a_failed_attempt_and_its_retry_are_each_priced_when_sent(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    clock = SetClock(JUST_BEFORE)
    ws = await (await _gateway(gateway_factory, settings, clock)).ws()
    # The first attempt is billed (message_start reported usage), then overloaded before any text: retried.
    fake.queue(
        Reply(hold_after_deltas=0, error_after_deltas=0, thinking=None, output_tokens_before_error=10, **TOKENS),
        Reply(text="second attempt", **TOKENS),
    )
    await send(ws, {"type": "chat.send", "id": "a", "content": "across midnight"})
    await fake.wait_held()
    clock.set(CHANGE + timedelta(seconds=1))
    fake.release()
    end = (await collect(ws))[-1]
    # The end frame sums the turn's requests, the billed failed attempt at its own (older) rate included: 2M + 1M.
    assert end["type"] == "chat.stream.end" and end["cost"]["cacheReadCost"] == 0.003 and end["requests"] == 2
    assert await usage_rows(settings.db_url) == [
        {"status": "failed", "rate_cache_read": 200, "cache_read_cost": 2_000_000, "total_cost": OLD_TOTAL},
        {"status": "complete", "rate_cache_read": 100, "cache_read_cost": 1_000_000, "total_cost": NEW_TOTAL},
    ]
    await ws.close()


async def test_the_inspector_prices_at_the_gateways_clock(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    rates = "output = 10\ncache_write_5m = 2.50\ncache_write_1h = 4\ncache_read = 0.10\n"
    settings.prices_path.write_text(
        '[[models]]\nid = "claude-sonnet-5-5"\n'
        f"[[models.periods]]\neffective_from = 1970-01-01\ninput = 2\n{rates}"
        f"[[models.periods]]\neffective_from = 2026-10-07\ninput = 4\n{rates}"
    )
    clock = SetClock(JUST_BEFORE)
    ws = await (await _gateway(gateway_factory, settings, clock)).ws()
    session_id = (await chat(ws, "hi"))[0]["sessionId"]
    old = await request(ws, {"type": "context.inspect", "id": "i", "sessionId": session_id})
    clock.set(CHANGE)
    new = await request(ws, {"type": "context.inspect", "id": "i", "sessionId": session_id})
    tokens = old["totals"]["tokenEstimate"]
    assert new["totals"]["tokenEstimate"] == tokens > 0
    assert (old["totals"]["costEstimate"], new["totals"]["costEstimate"]) == (tokens * 2000 / 1e9, tokens * 4000 / 1e9)
    await ws.close()


def _agent(settings: Settings, name: str, budget: str) -> None:
    root = settings.agents_dir / name
    root.mkdir(parents=True, exist_ok=True)
    (root / "agent.toml").write_text(f'cache = "off"\n\n[budget]\n{budget}\n')


async def test_budget_days_and_months_follow_the_gateways_clock(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    # Each send costs $0.01002 (10 input, 1000 output tokens) and may cost up to ~$0.01006: one fits under $0.015,
    # a second in the same period does not.
    _agent(settings, "daily", "daily_usd = 0.015")
    _agent(settings, "monthly", "monthly_usd = 0.015")
    fake.default = Reply(text="spent", input_tokens=10, output_tokens=1000)
    clock = SetClock(utc("2026-10-31T23:59:00"))
    ws = await (await _gateway(gateway_factory, settings, clock)).ws()
    for agent in ("daily", "monthly"):
        assert (await chat(ws, "spend", agentId=agent, maxTokens=1000))[-1]["type"] == "chat.stream.end"
    for agent in ("daily", "monthly"):
        [refused] = await chat(ws, "more", agentId=agent, maxTokens=1000)
        assert (refused["code"], refused["spentUsd"]) == ("BUDGET_EXCEEDED", 0.01002)
        assert refused["resetsAt"] == "2026-11-01T00:00:00Z"
    report = await request(ws, {"type": "usage.query", "id": "u"})
    assert {(b["agentId"], b["periodStart"], b["spentNanoUsd"]) for b in report["budgets"]} == {
        ("daily", "2026-10-31T00:00:00Z", 10_020_000),
        ("monthly", "2026-10-01T00:00:00Z", 10_020_000),
    }
    # A new day and a new month: both caps start again from nothing.
    clock.set(utc("2026-11-01T00:00:00"))
    for agent in ("daily", "monthly"):
        assert (await chat(ws, "fresh", agentId=agent, maxTokens=1000))[-1]["type"] == "chat.stream.end"
    report = await request(ws, {"type": "usage.query", "id": "u"})
    assert {(b["agentId"], b["periodStart"], b["spentNanoUsd"]) for b in report["budgets"]} == {
        ("daily", "2026-11-01T00:00:00Z", 10_020_000),
        ("monthly", "2026-11-01T00:00:00Z", 10_020_000),
    }
    await ws.close()


async def test_every_timestamp_written_comes_from_the_gateways_clock(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    """Whatever a gateway writes, through every path that writes, is dated by its clock: set far from today, not
    one stored date or time may fall on another day."""
    clock = SetClock(utc("2031-02-03T04:05:06"))
    gateway = await _gateway(gateway_factory, settings, clock)
    store = gateway.app[SERVICES].store
    key = new_key()
    await store.keys.create("laptop", key, daily_cap=None, monthly_cap=None)
    await store.keys.create("old", new_key(), daily_cap=None, monthly_cap=None)
    assert await store.keys.revoke("old")
    ws = await gateway.ws(headers={"Authorization": f"Bearer {key}"})  # a named key: its last use is stored
    session_id = (await chat(ws, "first"))[0]["sessionId"]
    # A billed attempt that failed before any text, then its retry; then a reply cancelled while it streams.
    fake.queue(Reply(error_after_deltas=0, thinking=None, **TOKENS), Reply(text="second", hold_after_deltas=1))
    await send(ws, {"type": "chat.send", "id": "h", "content": "second", "sessionId": session_id})
    await fake.wait_held()
    await send(ws, {"type": "chat.cancel", "id": "c", "sessionId": session_id})
    assert (await collect(ws, until=("chat.cancelled",)))[-2]["status"] == "cancelled"
    assert (await request(ws, {"type": "context.inspect", "sessionId": session_id}))["type"] == "context.inspection"
    # A tool call that waits for approval (it expires, is decided, starts and finishes).
    skill = settings.agents_dir / "careful" / "skills" / "pdf"
    skill.mkdir(parents=True)
    (skill / "SKILL.md").write_text("---\nname: pdf\ndescription: PDFs.\n---\nthe body")
    (settings.agents_dir / "careful" / "agent.toml").write_text('[tools.approval]\n"read_*" = "ask"\n')
    call = tool_use("read_skill", {"name": "pdf"})
    fake.queue(tool_reply(call), Reply(text="done"))
    await send(ws, {"type": "chat.send", "id": "t", "content": "read it", "agentId": "careful"})
    assert (await collect(ws, until=("chat.tool.approval",)))[-1]["expiresAt"].startswith("2031-02-03")
    await send(ws, {"type": "chat.tool.approve", "id": "a", "toolUseId": call["id"], "decision": "allow_once"})
    assert (await collect(ws))[-1]["type"] == "chat.stream.end"
    assert (await request(ws, {"type": "usage.query", "groupBy": "day"}))["groups"][0]["key"] == "2031-02-03"
    await ws.close()
    written: dict[str, list[str]] = {}
    for table in Base.metadata.sorted_tables:
        columns = [c.name for c in table.columns if isinstance(c.type, UTCDateTime | Date)]
        if columns:
            for row in await sql_rows(settings.db_url, f"select {', '.join(columns)} from {table.name}"):
                for column, value in row.items():
                    if value is not None:
                        written.setdefault(f"{table.name}.{column}", []).append(str(value)[:10])
    assert {where for where, days in written.items() if set(days) != {"2031-02-03"}} == set(), written
    # Every kind of row was written, so none escaped the check above.
    assert set(written) >= {
        "api_keys.created_at",
        "api_keys.last_used_at",
        "api_keys.revoked_at",
        "sessions.created_at",
        "sessions.updated_at",
        "messages.created_at",
        "messages.updated_at",
        "usage_records.created_at",
        "usage_daily.day",
        "token_calibration.updated_at",
        "tool_calls.created_at",
        "tool_calls.expires_at",
        "tool_calls.decided_at",
        "tool_calls.started_at",
        "tool_calls.finished_at",
    }


def test_no_module_reads_the_time_but_the_clock() -> None:
    """New code asks `services.clock.now()` (or its store's clock); only gateway/clock.py reads the machine's time,
    and the ORM's fallback default for rows written outside a gateway (gateway/store/models.py)."""
    allowed = {Path("clock.py"), Path("store/models.py")}
    reads: list[str] = []
    for path in sorted(GATEWAY.rglob("*.py")):
        if path.relative_to(GATEWAY) in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
                name = ast.unparse(node.func)
                if name.endswith(("datetime.now", "datetime.utcnow", "date.today", "time.time")) or name == "utcnow":
                    reads.append(f"{path.relative_to(GATEWAY)}:{node.lineno} {name}()")
    assert reads == []
