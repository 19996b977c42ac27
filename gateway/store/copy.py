"""Copy one gateway database into another (SQLite to PostgreSQL, usually): every session, message, usage row and
calibration sample, in batches, in one transaction on the target, verified before it commits.

`usage_daily` is not copied: the target's triggers build it from the usage rows as they arrive, and the check
below compares it with the source's too. Stop the gateways writing to the source first; the check would catch
rows written meanwhile (and roll everything back), but it cannot copy them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .models import Base, ChatSession, Message, TokenCalibration, UsageDaily, UsageRecord

# Parents before children (messages reference sessions).
TABLES: tuple[Table, ...] = tuple(
    Base.metadata.tables[name] for name in ("sessions", "messages", "usage_records", "token_calibration")
)
_ALL: tuple[Table, ...] = (*TABLES, Base.metadata.tables["usage_daily"])


class CopyError(Exception):
    """The copy was refused or did not verify; the target is left as it was."""


@dataclass
class CopyReport:
    rows: dict[str, int] = field(default_factory=dict)
    checks: dict[str, tuple[Any, ...]] = field(default_factory=dict)  # what was compared, as both sides answered


async def copy_database(
    source: AsyncEngine,
    target: AsyncEngine,
    *,
    force: bool = False,
    batch_size: int = 1000,
    progress: Callable[[str, int], None] | None = None,
) -> CopyReport:
    """Both databases must already be at the same schema revision (the caller migrates them)."""
    report = CopyReport()
    async with source.connect() as src, target.begin() as dst:
        if source.dialect.name == "postgresql":
            # One snapshot for every table, so the counts checked at the end describe one moment.
            await src.execution_options(isolation_level="REPEATABLE READ")
        present = {t.name: n for t in _ALL if (n := await _count(dst, t))}
        if present and not force:
            raise CopyError(f"the target already holds rows ({_describe(present)}); pass --force to replace them")
        for table in reversed(_ALL):  # children first; usage_daily's triggers tidy up after usage_records
            await dst.execute(delete(table))
        for table in TABLES:
            copied = 0
            result = await src.stream(select(table).order_by(*table.primary_key.columns))
            async for rows in result.partitions(batch_size):
                await dst.execute(insert(table), [dict(row._mapping) for row in rows])
                copied += len(rows)
                if progress is not None:
                    progress(table.name, copied)
            report.rows[table.name] = copied
        for name, query in _checks().items():
            want, got = tuple((await src.execute(query)).one()), tuple((await dst.execute(query)).one())
            if want != got:
                raise CopyError(f"verification failed for {name}: source {want}, target {got}; nothing was kept")
            report.checks[name] = want
    return report


async def _count(conn: AsyncConnection, table: Table) -> int:
    return int(await conn.scalar(select(func.count()).select_from(table)) or 0)


def _describe(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in counts.items())


def _checks() -> dict[str, Any]:
    u, d = UsageRecord, UsageDaily

    def total(column: Any) -> Any:
        return func.coalesce(func.sum(column), 0)

    return {
        "sessions": select(func.count(), total(ChatSession.message_count)).select_from(ChatSession),
        "messages": select(func.count(), total(Message.seq), func.count(Message.idempotency_key)),
        "usage_records": select(
            func.count(), total(u.input_tokens), total(u.output_tokens), total(u.total_cost), total(u.uncached_cost)
        ),
        "usage_daily": select(func.count(), total(d.request_count), total(d.total_cost)),
        "token_calibration": select(func.count(), total(TokenCalibration.samples)),
    }
