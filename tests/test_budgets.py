"""Spend caps per agent: refused before any upstream call when spend so far + in flight + this worst case passes.

Sonnet 5.5 in nano-USD per token: input 2000, output 10000, 5m write 2500, 1h write 4000. With caching on (the
default, 5m) a send's prompt is reserved at the 5m write rate, its output at maxTokens x 10000.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse

from gateway.billing.budget_config import Budget, budget_of_unreadable, parse_budget
from gateway.billing.budgets import period_bounds, worst_case
from gateway.billing.prices import PriceBook
from gateway.context.workspace import WorkspaceLoader
from gateway.settings import Settings
from tests.conftest import Gateway, chat, collect, recv, request, send
from tests.fake_anthropic import FakeAnthropic, Reply
from tests.sql import sql_exec, sql_rows

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "budget"),
    [
        (None, None),
        ({}, None),
        ({"daily_usd": 5}, Budget((("day", 5_000_000_000),))),
        ({"monthly_usd": 0.1}, Budget((("month", 100_000_000),))),
        ({"daily_usd": 2.5, "monthly_usd": 40}, Budget((("day", 2_500_000_000), ("month", 40_000_000_000)))),
        ({"daily_usd": 0}, Budget((("day", 0),))),
    ],
)
def test_parse_budget(raw: Any, budget: Budget | None) -> None:
    assert parse_budget(raw) == budget


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ({"dayly_usd": 5}, "unknown key(s) dayly_usd"),
        ({"daily_usd": -1}, "daily_usd must be a number"),
        ({"monthly_usd": "5"}, "monthly_usd must be a number"),
        ({"daily_usd": True}, "daily_usd must be a number"),
        ({"daily_usd": float("nan")}, "daily_usd must be a number"),
        (5, "[budget] must be a table"),
    ],
)
def test_a_broken_budget_fails_closed(raw: Any, problem: str) -> None:
    budget = parse_budget(raw)
    assert budget is not None and budget.problem is not None and problem in budget.problem


def test_budget_read_from_agent_toml(tmp_path: Path) -> None:
    root = tmp_path / "agents" / "writer"
    root.mkdir(parents=True)
    loader = WorkspaceLoader(tmp_path / "agents")
    (root / "agent.toml").write_text('cache = "1h"\n\n[budget]\ndaily_usd = 1.5\nmonthly_usd = 20\n')
    workspace = loader.load("writer")
    assert workspace.budget == Budget((("day", 1_500_000_000), ("month", 20_000_000_000)))
    assert workspace.problems == ()
    (root / "agent.toml").write_text('[budget]\ndaily_usd = "lots"\n')
    broken = loader.load("writer")
    assert broken.budget is not None and broken.budget.problem
    assert "sends are refused" in broken.problems[0]
    # Invalid TOML is ignored as a whole, but not a budget it meant to set.
    assert budget_of_unreadable("model = \n[budget]\ndaily_usd = 1") is not None
    assert budget_of_unreadable('model = "x" x') is None
    assert loader.load("default").budget is None


def test_worst_case_uses_the_dearest_rate_the_prompt_could_be_billed_at() -> None:
    book = PriceBook.load()
    assert worst_case(book, "claude-sonnet-5-5", "off", 1000, 100, NOW) == 1000 * 2000 + 100 * 10_000
    assert worst_case(book, "claude-sonnet-5-5", "5m", 1000, 100, NOW) == 1000 * 2500 + 100 * 10_000
    assert worst_case(book, "claude-sonnet-5-5", "1h", 1000, 100, NOW) == 1000 * 4000 + 100 * 10_000
    # Haiku 5.5 above 100K prompt tokens: the tier's rates ($0.625 5m write, $2.50 output per million).
    assert worst_case(book, "claude-haiku-5-5", "5m", 100_001, 10, NOW) == 100_001 * 625 + 10 * 2500
    assert worst_case(book, "claude-experimental-9", "5m", 1000, 100, NOW) is None


def test_period_bounds_are_utc_days_and_calendar_months() -> None:
    assert period_bounds("day", NOW) == (datetime(2026, 11, 25, tzinfo=UTC), datetime(2026, 11, 26, tzinfo=UTC))
    assert period_bounds("month", NOW) == (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
    december = datetime(2026, 12, 31, 23, 59, tzinfo=UTC)
    assert period_bounds("month", december) == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))


def make_agent(settings: Settings, name: str, budget: str, cache: str = "5m") -> None:
    root = settings.agents_dir / name
    root.mkdir(parents=True, exist_ok=True)
    (root / "agent.toml").write_text(f'cache = "{cache}"\n\n[budget]\n{budget}\n')


async def test_refused_before_any_upstream_call(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings, "frugal", "daily_usd = 0.001")
    frames = await chat(ws, "write me a novel", agentId="frugal", maxTokens=1000)
    [error] = frames
    assert error["type"] == "error" and error["code"] == "BUDGET_EXCEEDED" and error["retryable"] is False
    assert (error["agentId"], error["period"], error["capUsd"], error["spentUsd"], error["inFlightUsd"]) == (
        "frugal",
        "day",
        0.001,
        0.0,
        0.0,
    )
    assert error["requestWorstCaseUsd"] > 0.01  # 1000 output tokens alone are $0.01
    assert error["resetsAt"].endswith("T00:00:00Z")
    assert fake.requests == []
    # Nothing was written: no session, no message, no usage.
    assert (await request(ws, {"type": "session.list"}))["sessions"] == []
    assert await sql_rows(settings.db_url, "SELECT id FROM usage_records") == []
    # Other agents are not affected.
    assert (await chat(ws, "hello"))[-1]["type"] == "chat.stream.end"


async def test_spend_so_far_plus_worst_case(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings, "capped", "daily_usd = 0.05")
    fake.queue(Reply(input_tokens=1000, output_tokens=4000), Reply(input_tokens=10, output_tokens=10))
    first = (await chat(ws, "go", agentId="capped", maxTokens=100))[-1]
    assert first["cost"]["totalCost"] == 0.042  # 1000 x 2000 + 4000 x 10000 nano
    # $0.042 spent; 1000 more output tokens could cost $0.01 more: past $0.05.
    refused = (await chat(ws, "more", agentId="capped", maxTokens=1000))[-1]
    assert refused["code"] == "BUDGET_EXCEEDED" and refused["spentUsd"] == 0.042
    # 100 output tokens ($0.001) plus the prompt still fit.
    allowed = (await chat(ws, "a little more", agentId="capped", maxTokens=100))[-1]
    assert allowed["type"] == "chat.stream.end"
    assert len(fake.requests) == 2
    report = await request(ws, {"type": "usage.query", "agentId": "capped"})
    [cap] = report["budgets"]
    assert (cap["agentId"], cap["period"], cap["capUsd"], cap["capNanoUsd"]) == ("capped", "day", 0.05, 50_000_000)
    assert cap["spentNanoUsd"] == 42_000_000 + 10 * 2000 + 10 * 10_000
    assert cap["remainingUsd"] == (50_000_000 - cap["spentNanoUsd"]) / 1e9
    assert cap["inFlightUsd"] == 0.0


async def test_concurrent_sends_count_what_is_in_flight(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings, "shared", "daily_usd = 0.03")
    fake.queue(Reply(text="slow answer", hold_after_deltas=1, input_tokens=10, output_tokens=10))
    first, second = await gateway.ws(), await gateway.ws()
    await send(first, {"type": "chat.send", "id": "a", "content": "go", "agentId": "shared", "maxTokens": 2000})
    await fake.wait_held()
    # The first may still cost up to ~$0.02; a second like it would pass $0.03 even though nothing is spent yet.
    refused = (await chat(second, "go", id="b", agentId="shared", maxTokens=2000))[-1]
    assert refused["code"] == "BUDGET_EXCEEDED"
    # The first's provisional usage row counts what is known (its input); its reservation the rest of its worst case.
    assert refused["spentUsd"] + refused["inFlightUsd"] == pytest.approx(refused["requestWorstCaseUsd"])
    assert refused["requestWorstCaseUsd"] > 0.02 and refused["spentUsd"] < 0.0001
    report = await request(second, {"type": "usage.query", "agentId": "shared"})
    [cap] = report["budgets"]  # its provisional row may have been written meanwhile: the sum is what holds
    assert cap["spentUsd"] + cap["inFlightUsd"] == pytest.approx(refused["spentUsd"] + refused["inFlightUsd"])
    fake.release()
    assert (await collect(first))[-1]["type"] == "chat.stream.end"
    # Once it settled at its real cost ($0.00012), the reservation is gone and there is room again.
    again = (await chat(second, "go", id="c", agentId="shared", maxTokens=2000))[-1]
    assert again["type"] == "chat.stream.end"
    await first.close()
    await second.close()


async def test_monthly_cap_counts_the_whole_month(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings, "monthly", "monthly_usd = 1")
    start = period_bounds("month", datetime.now(UTC))[0].replace(tzinfo=None)
    await sql_exec(
        settings.db_url,
        "INSERT INTO usage_records (id, session_id, agent_id, model, status, input_tokens, output_tokens,"
        " cache_write_5m_tokens, cache_write_1h_tokens, cache_read_tokens, total_cost, duration_ms, created_at)"
        " VALUES ('old', 's', 'monthly', 'claude-sonnet-5-5', 'complete', 0, 0, 0, 0, 0, 999990000, 0, :at)",
        at=start,
    )
    refused = (await chat(ws, "one more", agentId="monthly", maxTokens=100))[-1]
    assert (refused["code"], refused["period"], refused["spentUsd"]) == ("BUDGET_EXCEEDED", "month", 0.99999)
    assert fake.requests == []


async def test_misconfigured_budget_or_unpriced_model_is_refused(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings, "typo", "dayly_usd = 5")
    refused = (await chat(ws, "hi", agentId="typo"))[-1]
    assert refused["code"] == "BUDGET_EXCEEDED" and "dayly_usd" in refused["message"]
    make_agent(settings, "capped", "daily_usd = 5")
    unpriced = (await chat(ws, "hi", agentId="capped", model="claude-experimental-9"))[-1]
    assert unpriced["code"] == "BUDGET_EXCEEDED" and "no known price" in unpriced["message"]
    assert fake.requests == []
    report = await request(ws, {"type": "usage.query"})
    assert {"agentId": "typo", "problem": "[budget]: unknown key(s) dayly_usd; allowed: daily_usd, monthly_usd"} in (
        report["budgets"]
    )
    assert [b["agentId"] for b in report["budgets"] if "period" in b] == ["capped"]


async def test_session_continues_under_its_agents_budget(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings, "capped", "daily_usd = 0.02")
    fake.queue(Reply(input_tokens=10, output_tokens=1000))
    session_id = (await chat(ws, "start", agentId="capped", maxTokens=100))[0]["sessionId"]
    # A continued session is charged to its agent even when the frame names none.
    refused = (await chat(ws, "continue", sessionId=session_id, maxTokens=1000))[-1]
    assert refused["code"] == "BUDGET_EXCEEDED" and refused["agentId"] == "capped"
    assert len(fake.requests) == 1
    await recv_nothing_pending(ws)


async def recv_nothing_pending(ws: ClientWebSocketResponse) -> None:
    """The refusal was the terminal frame: a ping answers next, with nothing in between."""
    await send(ws, {"type": "ping", "id": "p"})
    assert (await recv(ws)) == {"type": "pong", "id": "p", "requestId": "p"}
