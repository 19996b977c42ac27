"""`agentspace usage`: the usage report as a table with totals, read through the same code as `usage.query`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.protocol import GROUP_BY, dump, iso, parse_time
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.store import UsageFilters

_RELATIVE = re.compile(r"(\d+)([dh])")
_MICRO = Decimal("0.000001")
_COUNTS = (
    ("requests", "requestCount"),
    ("unpriced", "unpricedRequests"),
    ("input", "inputTokens"),
    ("output", "outputTokens"),
    ("write 5m", "cacheCreation5mInputTokens"),
    ("write 1h", "cacheCreation1hInputTokens"),
    ("cache read", "cacheReadInputTokens"),
    ("total", "totalTokens"),
)


def register(sub: Any) -> None:
    parser = sub.add_parser("usage", help="usage and cost report with totals (and spend against budgets)")
    when = "ISO 8601 date or time (UTC), 'today', or a span back from now like 7d or 12h"
    parser.add_argument("--since", help=f"from this moment, inclusive: {when}")
    parser.add_argument("--until", help=f"up to this moment, exclusive: {when}")
    parser.add_argument("--by", choices=GROUP_BY, default="model", help="one row per model (default), day, ...")
    parser.add_argument("--agent", help="only this agent's usage (and budget)")
    parser.add_argument("--key", metavar="NAME", help="only the usage of this gateway key (agentspace token list)")
    parser.add_argument("--model", help="only this model")
    parser.add_argument("--session", help="only this session")
    parser.add_argument("--json", action="store_true", help="print the usage.report frame instead of a table")
    parser.set_defaults(handler=run)


def parse_when(value: str | None, now: datetime) -> datetime | None:
    if value is None:
        return None
    if value == "today":
        return datetime(now.year, now.month, now.day, tzinfo=UTC)
    relative = _RELATIVE.fullmatch(value)
    if relative:
        amount, unit = int(relative.group(1)), relative.group(2)
        return now - (timedelta(days=amount) if unit == "d" else timedelta(hours=amount))
    try:
        return parse_time(value, "time")
    except GatewayError:
        raise ValueError(f"{value!r} is not a time: use an ISO 8601 date or time, 'today', 7d or 12h") from None


def run(args: argparse.Namespace) -> int:
    # The store (SQLAlchemy) is imported when the command runs, not when the CLI starts: see test_chat_cli.
    from gateway.store import UsageFilters

    settings = Settings.from_env()
    now = settings.clock.now()
    filters = UsageFilters(
        session_id=args.session,
        agent_id=args.agent,
        model=args.model,
        since=parse_when(args.since, now),
        until=parse_when(args.until, now),
    )
    report = asyncio.run(_report(settings, filters, args.by, getattr(args, "key", None)))
    print(dump(report) if args.json else format_report(report, filters, getattr(args, "key", None)))
    return 0


async def _report(
    settings: Settings, filters: UsageFilters, group_by: str, key_name: str | None = None
) -> dict[str, Any]:
    from gateway.billing.budgets import BudgetGuard
    from gateway.billing.prices import PriceBook
    from gateway.billing.reports import usage_report
    from gateway.context.workspace import WorkspaceLoader
    from gateway.store import Database, Store
    from gateway.store.db import create_engine, make_sessionmaker, upgrade_to_head

    engine = create_engine(settings.db_url)
    try:
        await upgrade_to_head(engine)  # as the gateway does at start; a no-op when it already ran
        store = Store(Database(engine, make_sessionmaker(engine)), settings.clock)
        if key_name is not None:
            key = await store.keys.by_name(key_name)
            if key is None:
                raise ValueError(f"no gateway key is named {key_name!r} (see agentspace token list)")
            filters = dataclasses.replace(filters, key_id=key.id)
        prices = PriceBook.load(settings.prices_path)
        # In flight: what every gateway process on this database holds right now (reservations are rows).
        budgets = BudgetGuard(store, prices)
        return await usage_report(
            store, filters, group_by, budgets=budgets, workspaces=WorkspaceLoader(settings.agents_dir)
        )
    finally:
        await engine.dispose()


def usd(value: float | None) -> str:
    """Dollars to the micro-dollar for reading; `--json` has them to the nano-dollar."""
    if value is None:
        return "-"
    return format(Decimal(repr(value)).quantize(_MICRO), "f")


def format_report(report: dict[str, Any], filters: UsageFilters, key_name: str | None = None) -> str:
    group_by = report["groupBy"]
    header = [group_by, *(name for name, _ in _COUNTS), "cost USD", "saved USD"]
    rows = [_row(group["key"] or "(no key)", group) for group in report["groups"]]
    lines = [_window(filters, key_name), ""]
    if rows:
        lines += _table(header, [*rows, _row("total", report["grandTotal"])], total_line=True)
    else:
        lines.append("no usage recorded in this window")
    grand = report["grandTotal"]
    if grand["estimatedRequests"]:
        lines += [
            "",
            f"of which estimated: {usd(grand['estimatedCost'])} USD and {grand['estimatedOutputTokens']:,} output"
            f" tokens of {grand['estimatedRequests']} request(s) cut short before Anthropic's final count",
        ]
    if report["unpricedRequests"]:
        lines += ["", f"{report['unpricedRequests']} request(s) used models with no known price: costs leave them out"]
    caps = report.get("budgets") or []
    if caps:
        lines += ["", *_budgets(caps)]
    return "\n".join(lines)


def _row(key: str, totals: dict[str, Any]) -> list[str]:
    return [key, *(f"{totals[field]:,}" for _, field in _COUNTS), usd(totals["totalCost"]), usd(totals["savedCost"])]


def _window(filters: UsageFilters, key_name: str | None = None) -> str:
    since = iso(filters.since) if filters.since else "the beginning"
    until = iso(filters.until) if filters.until else "now"
    named = (("agent", filters.agent_id), ("model", filters.model), ("session", filters.session_id), ("key", key_name))
    scope = [f"{name} {value}" for name, value in named if value]
    return f"usage from {since} to {until}" + (f" ({', '.join(scope)})" if scope else "")


def _budgets(caps: list[dict[str, Any]]) -> list[str]:
    rows, problems = [], []
    for cap in caps:
        if "problem" in cap:
            problems.append(f"budget of {cap['agentId']} is misconfigured, sends refused: {cap['problem']}")
            continue
        rows.append(
            [
                cap["agentId"] if "agentId" in cap else f"key {cap['keyName']}",
                cap["period"],
                usd(cap["capUsd"]),
                usd(cap["spentUsd"]),
                usd(cap["inFlightUsd"]),
                usd(cap["remainingUsd"]),
                cap["resetsAt"],
            ]
        )
    header = ["budget", "period", "cap USD", "spent USD", "in flight", "remaining", "resets at"]
    return (_table(header, rows) if rows else []) + problems


def _table(header: list[str], rows: list[list[str]], *, total_line: bool = False) -> list[str]:
    """Aligned columns: the first column left, the rest right, so digits and decimal points line up."""
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        cells = [c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(line)]
        return "  ".join(cells).rstrip()

    out = [fmt(header)]
    for i, row in enumerate(rows):
        if total_line and i == len(rows) - 1:
            out.append("  ".join("-" * w for w in widths))
        out.append(fmt(row))
    return out
