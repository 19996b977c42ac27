"""`agentspace usage` as a user runs it: the same report as `usage.query`, as an aligned table with totals."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.cli import main
from gateway.settings import Settings
from tests.test_usage_sql import insert_rows, make_rows


async def agentspace(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, ["usage", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("AGENTSPACE_HOME", str(settings.home))
    monkeypatch.setenv("AGENTSPACE_DB_URL", settings.db_url)
    return settings


def row(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "message_id": None,
        "status": "complete",
        "cache_write_5m_tokens": 0,
        "cache_write_1h_tokens": 0,
        "cache_read_tokens": 0,
        "input_cost": None,
        "output_cost": None,
        "cache_write_cost": None,
        "cache_read_cost": None,
        "total_cost": None,
        "uncached_cost": None,
        "duration_ms": 0,
    }
    return {**base, **fields}


async def test_table_with_totals(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await agentspace(capsys)  # migrates an empty database, like the gateway would
    assert code == 0 and "no usage recorded" in out
    await insert_rows(
        cli_env.db_url,
        [
            row(
                id="a",
                session_id="s1",
                agent_id="writer",
                model="claude-sonnet-5-5",
                input_tokens=1000,
                output_tokens=500,
                cache_write_5m_tokens=2000,
                cache_write_1h_tokens=3000,
                cache_read_tokens=10_000,
                input_cost=2_000_000,
                output_cost=5_000_000,
                cache_write_cost=17_000_000,
                cache_read_cost=1_000_000,
                total_cost=25_000_000,
                uncached_cost=37_000_000,
                created_at=datetime(2026, 11, 24, 10, tzinfo=UTC),
            ),
            row(
                id="b",
                session_id="s2",
                agent_id="default",
                model="claude-haiku-5-5",
                input_tokens=100,
                output_tokens=50,
                input_cost=10_000,
                output_cost=25_000,
                total_cost=35_000,
                uncached_cost=35_000,
                created_at=datetime(2026, 11, 25, 9, tzinfo=UTC),
            ),
            row(
                id="c",
                session_id="s2",
                agent_id="default",
                model="claude-x",
                input_tokens=100,
                output_tokens=50,
                created_at=datetime(2026, 11, 25, 9, 10, tzinfo=UTC),
            ),
        ],
    )
    code, out, _ = await agentspace(capsys, "--by", "day", "--since", "2026-11-01")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "usage from 2026-11-01T00:00:00Z to now"
    assert lines[2].split() == [
        "day",
        "requests",
        "unpriced",
        "input",
        "output",
        "write",
        "5m",
        "write",
        "1h",
        "cache",
        "read",
        "total",
        "cost",
        "USD",
        "saved",
        "USD",
    ]
    assert lines[3].split() == [
        "2026-11-24",
        "1",
        "0",
        "1,000",
        "500",
        "2,000",
        "3,000",
        "10,000",
        "16,500",
        "0.025000",
        "0.012000",
    ]
    assert lines[4].split() == ["2026-11-25", "2", "1", "200", "100", "0", "0", "0", "300", "0.000035", "0.000000"]
    assert set(lines[5]) == {"-", " "}
    total = ["total", "3", "1", "1,200", "600", "2,000", "3,000", "10,000", "16,800", "0.025035", "0.012000"]
    assert lines[6].split() == total
    # Aligned: every column ends where its header ends.
    assert len({len(line) for line in lines[2:7]}) == 1
    assert "1 request(s) used models with no known price" in out


async def test_json_is_the_usage_report_frame(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    await agentspace(capsys)
    await insert_rows(cli_env.db_url, make_rows(200, seed=5))
    code, out, _ = await agentspace(capsys, "--json", "--by", "agent", "--model", "claude-sonnet-5-5")
    report = json.loads(out)
    assert code == 0 and report["type"] == "usage.report" and report["groupBy"] == "agent"
    assert sum(g["totalCostNanoUsd"] for g in report["groups"]) == report["grandTotal"]["totalCostNanoUsd"]
    assert list(report["perModel"]) == ["claude-sonnet-5-5"]
    code, out, _ = await agentspace(capsys, "--by", "session", "--agent", "writer", "--since", "3d")
    assert code == 0 and "(agent writer)" in out.splitlines()[0]


async def test_budgets_show_spend_against_caps(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    root = cli_env.agents_dir / "writer"
    root.mkdir(parents=True)
    (root / "agent.toml").write_text("[budget]\ndaily_usd = 2\nmonthly_usd = 30\n")
    await agentspace(capsys)
    now = datetime.now(UTC)
    await insert_rows(
        cli_env.db_url,
        [
            row(
                id="x",
                session_id="s",
                agent_id="writer",
                model="claude-sonnet-5-5",
                input_tokens=1,
                output_tokens=1,
                total_cost=250_000_000,
                created_at=now,
            )
        ],
    )
    code, out, _ = await agentspace(capsys, "--agent", "writer")
    assert code == 0
    budget_lines = out.splitlines()[-3:]
    assert budget_lines[0].split()[:6] == ["budget", "period", "cap", "USD", "spent", "USD"]
    assert budget_lines[1].split()[:6] == ["writer", "day", "2.000000", "0.250000", "0.000000", "1.750000"]
    assert budget_lines[2].split()[:6] == ["writer", "month", "30.000000", "0.250000", "0.000000", "29.750000"]


async def test_bad_time_is_a_clear_error(cli_env: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = await agentspace(capsys, "--since", "yesterday")
    assert code == 2 and "'yesterday' is not a time" in err
