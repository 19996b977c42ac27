"""Budgets across processes (docs/BUDGETS.md, "Several gateway processes"): reservations are rows in SQL, checked and
written in one transaction under a lock per holder, so gateway processes sharing one database cannot together pass a
cap. Each "process" is its own engine and store (its own connections, its own in-process locks), or a whole gateway
app, on one SQLite file or one PostgreSQL database.

Sonnet 5.5 in nano-USD per token: input 2000, output 10000, 5m cache write 2500.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.billing.budget_config import Budget
from gateway.billing.budgets import BudgetGuard, Reservation
from gateway.billing.prices import PriceBook
from gateway.context.workspace import Workspace, WorkspaceLoader
from gateway.errors import BudgetExceeded
from gateway.settings import Settings
from gateway.store import Database, Store
from gateway.store.db import create_engine, make_sessionmaker, upgrade_to_head
from gateway.store.models import UsageRecord
from tests.clock import SetClock
from tests.conftest import Gateway, chat, collect, make_settings, request, send
from tests.fake_anthropic import FakeAnthropic, Reply
from tests.sql import sql_exec, sql_rows

NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
MODEL = "claude-sonnet-5-5"
# 10 prompt tokens at the 5m write rate and 1000 output tokens: 10 x 2500 + 1000 x 10000 nano-USD.
WORST = 10 * 2500 + 1000 * 10_000
Process = tuple[Store, BudgetGuard]


@pytest.fixture
async def processes(db_url: str) -> AsyncIterator[Callable[[], Awaitable[Process]]]:
    opened: list[tuple[Database, BudgetGuard]] = []

    async def open_one() -> Process:
        engine = create_engine(db_url)
        await upgrade_to_head(engine)
        database = Database(engine, make_sessionmaker(engine))
        store = Store(database, SetClock(NOW))
        guard = BudgetGuard(store, PriceBook.load())
        opened.append((database, guard))
        return store, guard

    yield open_one
    for database, guard in opened:
        await guard.close()
        await database.close()
        await database.engine.dispose()


def capped(tmp_path: Path, cap_nano: int) -> Workspace:
    return replace(WorkspaceLoader(tmp_path).load("default"), budget=Budget((("day", cap_nano),)))


async def test_processes_sharing_a_database_cannot_together_pass_a_cap(
    processes: Callable[[], Awaitable[Process]], tmp_path: Path
) -> None:
    """Two processes, eight sends each at once, room for five worst cases: exactly five are admitted in all."""
    (_, a), (_, b) = await processes(), await processes()
    workspace = capped(tmp_path, 5 * WORST + WORST // 2)

    async def one(guard: BudgetGuard) -> Reservation | None:
        try:
            return await guard.reserve(workspace, MODEL, 10, 1000, NOW)
        except BudgetExceeded:
            return None

    results = await asyncio.gather(*(one(guard) for guard in (a, b) for _ in range(8)))
    admitted = [r for r in results if r is not None]
    assert len(admitted) == 5
    # Each process sees every process's reservations: what A reports in flight includes B's.
    [status] = await a.status(_Agents(workspace))
    assert status["inFlightUsd"] * 1e9 == pytest.approx(5 * WORST)
    for reservation in admitted:
        await reservation.release()
    [status] = await b.status(_Agents(workspace))
    assert status["inFlightUsd"] == 0.0


async def test_a_request_counts_once_from_its_usage_row_to_its_release(
    processes: Callable[[], Awaitable[Process]], tmp_path: Path
) -> None:
    """While a request streams, its (provisional) usage row counts what is known and its reservation only the rest of
    its worst case; once released, only the row counts."""
    store, guard = await processes()
    workspace = capped(tmp_path, 10 * WORST)
    held = await guard.reserve(workspace, MODEL, 10, 1000, NOW)
    assert held is not None
    row = UsageRecord(id="u1", session_id="s", agent_id="default", model=MODEL, status="streaming",
                      total_cost=WORST // 4, created_at=NOW)  # fmt: skip
    await store.usage.begin(row, held.ids)
    [status] = await guard.status(_Agents(workspace))
    assert (status["spentNanoUsd"], status["inFlightUsd"] * 1e9) == (WORST // 4, pytest.approx(WORST - WORST // 4))
    await held.release()
    [status] = await guard.status(_Agents(workspace))
    assert (status["spentNanoUsd"], status["inFlightUsd"]) == (WORST // 4, 0.0)


async def test_a_dead_process_reservation_ends_with_its_lease(
    processes: Callable[[], Awaitable[Process]], tmp_path: Path, db_url: str
) -> None:
    """A process killed while holding a reservation stops renewing it: past its lease it no longer counts, and the
    next check deletes it."""
    _, guard = await processes()
    workspace = capped(tmp_path, WORST + WORST // 2)
    past = datetime.now(UTC) - timedelta(seconds=1)
    await sql_exec(
        db_url,
        "INSERT INTO budget_reservations (id, holder, amount, owner, created_at, expires_at)"
        " VALUES ('dead', 'agent:default', :amount, 'gone', :at, :at)",
        amount=WORST,
        at=past.replace(tzinfo=None),
    )
    held = await guard.reserve(workspace, MODEL, 10, 1000, NOW)
    assert held is not None
    assert await sql_rows(db_url, "SELECT id FROM budget_reservations WHERE id = 'dead'") == []
    # A live one of another process does count.
    await sql_exec(db_url, "UPDATE budget_reservations SET owner = 'other'")
    with pytest.raises(BudgetExceeded):
        await guard.reserve(workspace, MODEL, 10, 1000, NOW)


async def test_two_gateways_on_one_database_share_a_budget(
    gateway_factory: Callable[[Settings], Awaitable[Gateway]], tmp_path: Path, fake: FakeAnthropic, db_url: str
) -> None:
    """A send streaming through one gateway holds its worst case against the agent's cap for the other gateway too;
    once it settles, its real cost counts instead, in both."""
    settings = make_settings(tmp_path / "home", fake, db_url)
    agent = settings.agents_dir / "shared"
    agent.mkdir(parents=True)
    (agent / "agent.toml").write_text("[budget]\ndaily_usd = 0.03\n")
    a, b = await gateway_factory(settings), await gateway_factory(settings)
    ws_a, ws_b = await a.ws(), await b.ws()
    fake.queue(Reply(text="slow answer", hold_after_deltas=1, input_tokens=10, output_tokens=10))
    await send(ws_a, {"type": "chat.send", "id": "a", "content": "go", "agentId": "shared", "maxTokens": 2000})
    await fake.wait_held()
    refused = (await chat(ws_b, "go", id="b", agentId="shared", maxTokens=2000))[-1]
    assert refused["code"] == "BUDGET_EXCEEDED" and refused["inFlightUsd"] > 0.019
    assert (await request(ws_b, {"type": "usage.query", "agentId": "shared"}))["budgets"][0]["inFlightUsd"] > 0.019
    fake.release()
    assert (await collect(ws_a))[-1]["type"] == "chat.stream.end"
    again = (await chat(ws_b, "go", id="c", agentId="shared", maxTokens=2000))[-1]
    assert again["type"] == "chat.stream.end"
    assert await sql_rows(db_url, "SELECT id FROM budget_reservations") == []
    await ws_a.close()
    await ws_b.close()


class _Agents:
    def __init__(self, workspace: Workspace) -> None:
        self._workspace = workspace

    def list_agents(self) -> list[str]:
        return [self._workspace.agent_id]

    def load(self, agent_id: str) -> Workspace:
        return self._workspace
