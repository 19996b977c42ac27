"""Reports equal SQL over `usage_records` exactly, for every filter and grouping, although whole days are read from
the `usage_daily` rollup; the rollup and the views stay equal to `usage_records` whatever SQL writes it."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from gateway.billing.accounting import nano_to_usd
from gateway.protocol import iso
from gateway.settings import Settings
from gateway.store.models import UsageRecord
from tests.conftest import Gateway, request
from tests.sql import sql_exec, sql_rows

START = datetime(2026, 11, 1, tzinfo=UTC)
DAYS = 6
MODELS = ("claude-sonnet-5-5", "claude-haiku-5-5", "claude-mystery-1")  # the last one is never priced
AGENTS = ("default", "writer")
SESSIONS = tuple(f"session-{i}" for i in range(8))

# usage_records expressions summed per group, as a person would write them in SQL.
SUMS = """
    COUNT(*) AS request_count,
    SUM(CASE WHEN total_cost IS NULL THEN 1 ELSE 0 END) AS unpriced_requests,
    SUM(input_tokens) AS input_tokens,
    SUM(output_tokens) AS output_tokens,
    SUM(cache_write_5m_tokens) AS cache_write_5m_tokens,
    SUM(cache_write_1h_tokens) AS cache_write_1h_tokens,
    SUM(cache_read_tokens) AS cache_read_tokens,
    COALESCE(SUM(input_cost), 0) AS input_cost,
    COALESCE(SUM(output_cost), 0) AS output_cost,
    COALESCE(SUM(cache_write_cost), 0) AS cache_write_cost,
    COALESCE(SUM(cache_read_cost), 0) AS cache_read_cost,
    COALESCE(SUM(total_cost), 0) AS total_cost,
    COALESCE(SUM(CASE WHEN total_cost IS NULL THEN 0 ELSE uncached_cost END), 0) AS uncached_cost"""
ROLLUP_COLUMNS = (
    "request_count, unpriced_requests, input_tokens, output_tokens, cache_write_5m_tokens, cache_write_1h_tokens,"
    " cache_read_tokens, input_cost, output_cost, cache_write_cost, cache_read_cost, total_cost, uncached_cost"
)


def make_rows(count: int, seed: int = 7) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    rows = []
    for i in range(count):
        # Some rows sit exactly on midnight or a microsecond before it: the edges of whole days.
        day = rnd.randrange(DAYS)
        if i % 17 == 0:
            at = START + timedelta(days=day)
        elif i % 19 == 0:
            at = START + timedelta(days=day + 1) - timedelta(microseconds=1)
        else:
            at = START + timedelta(days=day, seconds=rnd.randrange(86_400), microseconds=rnd.randrange(1_000_000))
        model = rnd.choice(MODELS)
        tokens = [rnd.randrange(0, 5000) for _ in range(5)]
        priced = model != "claude-mystery-1"
        costs = [t * rnd.choice((100, 500, 2000)) for t in tokens] if priced else [None] * 5
        rows.append(
            {
                "id": f"u{i:05d}",
                "session_id": rnd.choice(SESSIONS),
                "message_id": None,
                "agent_id": rnd.choice(AGENTS),
                "model": model,
                "status": rnd.choice(("complete", "complete", "cancelled", "failed", "disconnected")),
                "input_tokens": tokens[0],
                "output_tokens": tokens[1],
                "cache_write_5m_tokens": tokens[2],
                "cache_write_1h_tokens": tokens[3],
                "cache_read_tokens": tokens[4],
                "input_cost": costs[0],
                "output_cost": costs[1],
                "cache_write_cost": None if costs[2] is None else costs[2] + (costs[3] or 0),
                "cache_read_cost": costs[4],
                "total_cost": None if not priced else sum(c or 0 for c in costs),
                "uncached_cost": None if not priced else (sum(tokens) - tokens[1]) * 2000 + (costs[1] or 0),
                "duration_ms": 0,
                "created_at": at,
            }
        )
    return rows


async def insert_rows(db_url: str, rows: list[dict[str, Any]]) -> None:
    # Through the ORM table so the dates are stored exactly as the gateway stores them (naive UTC).
    engine = create_async_engine(db_url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(UsageRecord.__table__), rows)
    finally:
        await engine.dispose()


def _naive(value: datetime) -> Any:
    return value.astimezone(UTC).replace(tzinfo=None)


async def expected(db_url: str, query: dict[str, Any], group: str) -> dict[str, dict[str, int]]:
    """The report as plain SQL over usage_records computes it."""
    sqlite = db_url.startswith("sqlite")
    key = {
        "model": "model",
        "agent": "agent_id",
        "session": "session_id",
        "day": "date(created_at)" if sqlite else "CAST(created_at AS DATE)",
    }[group]
    where, params = ["1 = 1"], {}
    for field, column in (("sessionId", "session_id"), ("agentId", "agent_id"), ("model", "model")):
        if field in query:
            where.append(f"{column} = :{field}")
            params[field] = query[field]
    for field, op in (("since", ">="), ("until", "<")):
        if field in query:
            moment = datetime.fromisoformat(query[field].replace("Z", "+00:00"))
            # SQLite keeps dates as text in SQLAlchemy's format; compare like with like.
            params[field] = _naive(moment).strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else _naive(moment)
            where.append(f"created_at {op} :{field}")
    rows = await sql_rows(
        db_url, f"SELECT {key} AS k, {SUMS} FROM usage_records WHERE {' AND '.join(where)} GROUP BY {key}", **params
    )
    return {str(r.pop("k")): {k: int(v) for k, v in r.items()} for r in rows}


def reported(fields: dict[str, Any]) -> dict[str, Any]:
    return {
        "request_count": fields["requestCount"],
        "unpriced_requests": fields["unpricedRequests"],
        "input_tokens": fields["inputTokens"],
        "output_tokens": fields["outputTokens"],
        "cache_write_5m_tokens": fields["cacheCreation5mInputTokens"],
        "cache_write_1h_tokens": fields["cacheCreation1hInputTokens"],
        "cache_read_tokens": fields["cacheReadInputTokens"],
        "total_cost": fields["totalCostNanoUsd"],
        "usd": (
            fields["inputCost"],
            fields["outputCost"],
            fields["cacheWriteCost"],
            fields["cacheReadCost"],
            fields["savedCost"],
        ),
    }


def as_reported(sums: dict[str, int]) -> dict[str, Any]:
    out: dict[str, Any] = {
        k: v
        for k, v in sums.items()
        if k not in ("input_cost", "output_cost", "cache_write_cost", "cache_read_cost", "uncached_cost")
    }
    out["usd"] = tuple(
        nano_to_usd(v)
        for v in (
            sums["input_cost"],
            sums["output_cost"],
            sums["cache_write_cost"],
            sums["cache_read_cost"],
            sums["uncached_cost"] - sums["total_cost"],
        )
    )
    return out


def at(day: int, hour: int = 0, minute: int = 0, micro: int = 0) -> str:
    return iso(START + timedelta(days=day, hours=hour, minutes=minute, microseconds=micro))


QUERIES: list[dict[str, Any]] = [
    {},
    {"since": at(2)},  # whole days only
    {"since": at(1, 13, 30)},  # a partial first day
    {"until": at(4, 6)},  # a partial last day
    {"since": at(1, 23, 59, 999_999), "until": at(5, 0, 0, 1)},  # a microsecond of each edge day
    {"since": at(2, 3), "until": at(2, 20)},  # within one day
    {"since": at(3), "until": at(3)},  # empty
    {"since": at(4), "until": at(2)},  # backwards: empty
    {"since": "2026-11-02", "until": "2026-11-05"},  # dates alone are midnights
    {"agentId": "writer", "since": at(1, 8)},
    {"model": "claude-mystery-1"},
    {"model": "claude-haiku-5-5", "agentId": "default", "until": at(3, 12)},
    {"sessionId": "session-3"},
    {"sessionId": "session-5", "since": at(2, 12), "agentId": "writer"},
]


@pytest.mark.parametrize("query", QUERIES, ids=[str(i) for i in range(len(QUERIES))])
async def test_report_equals_sql_over_usage_records(
    gateway: Gateway, ws: ClientWebSocketResponse, settings: Settings, query: dict[str, Any]
) -> None:
    await insert_rows(settings.db_url, make_rows(600))
    for group in ("model", "day", "agent", "session"):
        report = await request(ws, {"type": "usage.query", "groupBy": group, **query})
        want = await expected(settings.db_url, query, group)
        got = {g["key"]: reported(g) for g in report["groups"]}
        assert got == {k: as_reported(v) for k, v in want.items()}, (group, query)
    per_model = await expected(settings.db_url, query, "model")
    assert {m: reported(t) for m, t in report["perModel"].items()} == {k: as_reported(v) for k, v in per_model.items()}
    grand = {name: sum(t[name] for t in per_model.values()) for name in next(iter(per_model.values()), {})}
    if grand:
        assert reported(report["grandTotal"]) == as_reported(grand)
        assert report["unpricedRequests"] == grand["unpriced_requests"]
    else:
        assert report["grandTotal"]["requestCount"] == 0 and report["perModel"] == {}


async def rollup_matches(db_url: str) -> None:
    day = "date(created_at)" if db_url.startswith("sqlite") else "CAST(created_at AS DATE)"
    raw = await sql_rows(
        db_url, f"SELECT {day} AS day, agent_id, model, {SUMS} FROM usage_records GROUP BY {day}, agent_id, model"
    )
    rollup = await sql_rows(db_url, f"SELECT day, agent_id, model, {ROLLUP_COLUMNS} FROM usage_daily")

    def keyed(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, int]]:
        return {(str(r.pop("day")), r.pop("agent_id"), r.pop("model")): {k: int(v) for k, v in r.items()} for r in rows}

    assert keyed(rollup) == keyed(raw)


async def test_rollup_stays_equal_whatever_sql_writes(gateway: Gateway, settings: Settings) -> None:
    db = settings.db_url
    triggers = await sql_rows(
        db,
        "SELECT name FROM sqlite_master WHERE type = 'trigger'"
        if db.startswith("sqlite")
        else "SELECT tgname AS name FROM pg_trigger WHERE NOT tgisinternal",
    )
    expected_triggers = {"usage_daily_after_insert", "usage_daily_after_delete", "usage_daily_after_update"}
    if not db.startswith("sqlite"):
        expected_triggers.add("usage_daily_after_truncate")  # row triggers do not see TRUNCATE
    assert {t["name"] for t in triggers} == expected_triggers
    await insert_rows(db, make_rows(400, seed=3))
    await rollup_matches(db)
    # A person prunes old rows, moves some to another day and model, and marks others unpriced, all by hand.
    await sql_exec(db, "DELETE FROM usage_records WHERE created_at < :cut", cut=_naive(START + timedelta(days=1)))
    await sql_exec(
        db,
        "UPDATE usage_records SET model = 'claude-sonnet-5-5', created_at = :moved WHERE id LIKE '%3'",
        moved=_naive(START + timedelta(days=5, hours=1)),
    )
    await sql_exec(db, "UPDATE usage_records SET total_cost = NULL, input_cost = NULL WHERE id LIKE '%7'")
    await rollup_matches(db)
    # Groups that lost their last row are gone, not left behind as zeros.
    await sql_exec(db, "DELETE FROM usage_records WHERE agent_id = 'writer'")
    await rollup_matches(db)
    assert not await sql_rows(db, "SELECT * FROM usage_daily WHERE agent_id = 'writer' OR request_count = 0")
    # Emptying the table the quick way empties the rollup too (PostgreSQL's TRUNCATE fires no row triggers).
    await sql_exec(db, "DELETE FROM usage_records" if db.startswith("sqlite") else "TRUNCATE usage_records")
    assert await sql_rows(db, "SELECT COUNT(*) AS n FROM usage_daily") == [{"n": 0}]


async def test_views_are_readable_and_in_usd(gateway: Gateway, settings: Settings) -> None:
    db = settings.db_url
    await insert_rows(db, make_rows(300, seed=11))
    by_model = {r["model"]: r for r in await sql_rows(db, "SELECT * FROM usage_by_model")}
    raw = {r["model"]: r for r in await sql_rows(db, f"SELECT model, {SUMS} FROM usage_records GROUP BY model")}
    assert set(by_model) == set(raw)
    for model, view in by_model.items():
        want = raw[model]
        assert view["request_count"] == want["request_count"]
        assert view["unpriced_requests"] == want["unpriced_requests"]
        assert view["input_tokens"] == want["input_tokens"] and view["output_tokens"] == want["output_tokens"]
        assert view["cache_creation_input_tokens"] == want["cache_write_5m_tokens"] + want["cache_write_1h_tokens"]
        assert view["cache_read_input_tokens"] == want["cache_read_tokens"]
        for column, nano in (
            ("total_cost_usd", want["total_cost"]),
            ("input_cost_usd", want["input_cost"]),
            ("saved_cost_usd", want["uncached_cost"] - want["total_cost"]),
        ):
            assert abs(float(view[column]) - int(nano) / 1e9) < 1e-12, column  # SUM is NUMERIC on PostgreSQL
    days = await sql_rows(db, "SELECT day, model, request_count, total_cost_usd FROM usage_by_day ORDER BY day, model")
    assert sum(d["request_count"] for d in days) == 300
    assert len({str(d["day"]) for d in days}) == DAYS
    sessions = await sql_rows(db, "SELECT * FROM usage_by_session WHERE session_id = 'session-2'")
    raw_session = await sql_rows(db, f"SELECT {SUMS} FROM usage_records WHERE session_id = 'session-2'")
    assert sum(s["request_count"] for s in sessions) == raw_session[0]["request_count"]
    assert abs(sum(float(s["total_cost_usd"]) for s in sessions) - int(raw_session[0]["total_cost"]) / 1e9) < 1e-12
