"""How long a usage report takes over 1,000,000 usage rows: P50/P95 through the report code and over the WebSocket.

    python -m bench.usage_report                        # 1,000,000 rows over 180 days, 30 runs per query
    python -m bench.usage_report --rows 200000 --runs 50

Makes a temporary SQLite database migrated to head (as the gateway does), bulk-inserts the rows with one
`executemany` in one transaction (the triggers of migration 0002 keep `usage_daily` as they would for the gateway),
then times `usage.query` variants through `gateway.reports.usage_report` (what `usage.query` and `agentspace usage`
run) and the plain report end to end over a real WebSocket. For comparison it also times the same sums straight over
`usage_records`, which is what a report would cost without the rollup. Figures go in docs/SQL.md.
Target (issue 7): P50 <= 20 ms for the plain report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.seed import USAGE_COLUMNS, usage_rows
from gateway.app import create_app
from gateway.billing.budgets import BudgetGuard
from gateway.billing.prices import PriceBook
from gateway.billing.reports import usage_report
from gateway.context.workspace import WorkspaceLoader
from gateway.settings import Settings, default_db_url
from gateway.store import Database, Store, UsageFilters
from gateway.store.db import create_engine, make_sessionmaker, upgrade_to_head

COLUMNS = ", ".join(USAGE_COLUMNS)


def bulk_insert(path: Path, rows: Iterator[tuple[Any, ...]]) -> None:
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA synchronous=OFF")  # a load, not the gateway's durability setting
        db.execute("PRAGMA cache_size=-262144")  # 256 MiB
        db.execute("BEGIN")
        marks = ", ".join("?" * len(COLUMNS.split(",")))
        db.executemany(f"INSERT INTO usage_records ({COLUMNS}) VALUES ({marks})", rows)
        db.execute("COMMIT")
    finally:
        db.close()


def stats(samples: tuple[list[float], list[float]]) -> str:
    wall, cpu = (sorted(s) for s in samples)
    p95 = wall[min(len(wall) - 1, int(len(wall) * 0.95))]
    return (
        f"P50 {statistics.median(wall):7.2f} ms   P95 {p95:7.2f} ms   max {wall[-1]:7.2f} ms"
        f"   (CPU P50 {statistics.median(cpu):6.2f} ms)"
    )


async def timed(runs: int, call: Callable[[int], Awaitable[Any]]) -> tuple[list[float], list[float]]:
    """Wall time per call, and CPU time of this process (all threads): a busy machine inflates the first much more
    than the second."""
    await call(-1)  # warm: first statement preparation, page cache
    wall, cpu = [], []
    for i in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        await call(i)
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return wall, cpu


async def main(rows: int, days: int, sessions: int, runs: int) -> None:
    rng = random.Random(7)
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        settings = Settings(home=home, db_url=default_db_url(home), anthropic_api_key=None, heartbeat_s=0)
        engine = create_engine(settings.db_url)
        await upgrade_to_head(engine)
        t0, c0 = time.perf_counter(), time.process_time()
        bulk_insert(home / "gateway.db", usage_rows(rows, days, sessions, now, rng))
        load_s, load_cpu = time.perf_counter() - t0, time.process_time() - c0
        size_mb = (home / "gateway.db").stat().st_size / 1e6
        print(
            f"inserted {rows:,} usage rows over {days} days, {sessions:,} sessions in {load_s:.1f} s"
            f" ({load_cpu:.1f} s CPU, {load_cpu / rows * 1e6:.0f} us CPU a row, rollup triggers included);"
            f" database {size_mb:,.0f} MB"
        )
        raw = sqlite3.connect(home / "gateway.db")
        rollup_rows = raw.execute("SELECT COUNT(*) FROM usage_daily").fetchone()[0]
        print(f"usage_daily holds {rollup_rows:,} rows (day x agent x model)\n")

        store = Store(Database(engine, make_sessionmaker(engine)))
        guard = BudgetGuard(store, PriceBook.load())
        workspaces = WorkspaceLoader(settings.agents_dir)
        session_ids = [r[0] for r in raw.execute("SELECT DISTINCT session_id FROM usage_records LIMIT 1000")]

        def report(filters: Callable[[int], UsageFilters], group: str | None = None) -> Callable[[int], Awaitable[Any]]:
            return lambda i: usage_report(store, filters(i), group, budgets=guard, workspaces=workspaces)

        week = now - timedelta(days=7)
        variants: list[tuple[str, Callable[[int], Awaitable[Any]]]] = [
            ("all, per model (the plain report)", report(lambda i: UsageFilters())),
            ("since last week (now - 7 days)", report(lambda i: UsageFilters(since=week))),
            ("one session", report(lambda i: UsageFilters(session_id=session_ids[i % len(session_ids)]))),
            ("groupBy day, all time", report(lambda i: UsageFilters(), "day")),
            ("groupBy agent, since 30 days", report(lambda i: UsageFilters(since=now - timedelta(days=30)), "agent")),
            (
                "one agent, groupBy model, since a date",
                report(lambda i: UsageFilters(agent_id="writer", since=now - timedelta(days=90, hours=5)), "model"),
            ),
            (
                "one agent, groupBy session, last 24 h",
                report(lambda i: UsageFilters(agent_id="writer", since=now - timedelta(hours=24)), "session"),
            ),
        ]
        print(f"usage_report (what usage.query runs), {runs} runs each:")
        for label, call in variants:
            print(f"  {label:42} {stats(await timed(runs, call))}")

        sums = (
            "COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cache_write_5m_tokens), SUM(cache_write_1h_tokens),"
            " SUM(cache_read_tokens), SUM(input_cost), SUM(output_cost), SUM(cache_write_cost),"
            " SUM(cache_read_cost), SUM(total_cost), SUM(uncached_cost)"
        )

        async def raw_all(_: int) -> None:
            raw.execute(f"SELECT model, {sums} FROM usage_records GROUP BY model").fetchall()

        async def view(_: int) -> None:
            raw.execute("SELECT * FROM usage_by_model").fetchall()

        print("\nfor comparison, plain sqlite3:")
        print(f"  {'usage_records summed per model (no rollup)':42} {stats(await timed(min(runs, 5), raw_all))}")
        print(f"  {'SELECT * FROM usage_by_model':42} {stats(await timed(runs, view))}")
        raw.close()
        await engine.dispose()

        app = create_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with aiohttp.ClientSession() as http, http.ws_connect(f"http://127.0.0.1:{port}/gateway") as ws:

                async def over_ws(i: int) -> None:
                    await ws.send_str(json.dumps({"type": "usage.query", "id": i}))
                    answer = json.loads((await ws.receive()).data)
                    assert answer["type"] == "usage.report", answer

                print(f"\nusage.query over the WebSocket, {runs} runs:")
                print(f"  {'all, per model (the plain report)':42} {stats(await timed(runs, over_ws))}")
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.days, args.sessions, args.runs))
