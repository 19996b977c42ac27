"""Usage reports: integer sums in SQL over `usage_records`, grouped as asked; dollars are made at the edge."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Date, case, cast, func, select
from sqlalchemy.sql import ColumnElement

from ..models import UsageRecord
from .base import Database

U = UsageRecord


@dataclass(frozen=True, slots=True)
class UsageFilters:
    session_id: str | None = None
    agent_id: str | None = None
    model: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def clauses(self) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        if self.session_id is not None:
            out.append(U.session_id == self.session_id)
        if self.agent_id is not None:
            out.append(U.agent_id == self.agent_id)
        if self.model is not None:
            out.append(U.model == self.model)
        if self.since is not None:
            out.append(U.created_at >= self.since)
        if self.until is not None:
            out.append(U.created_at < self.until)
        return out


@dataclass(slots=True)
class UsageTotals:
    """Sums of one group. Costs are nano-USD over the priced rows only; `unpriced_requests` says how many were not."""

    request_count: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0
    input_cost: int = 0
    output_cost: int = 0
    cache_write_cost: int = 0
    cache_read_cost: int = 0
    total_cost: int = 0
    uncached_cost: int = 0
    unpriced_requests: int = 0

    def add(self, other: UsageTotals) -> None:
        for name in _SUM_FIELDS:
            setattr(self, name, getattr(self, name) + getattr(other, name))


_SUM_FIELDS = (
    "request_count",
    "input_tokens",
    "output_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cache_read_tokens",
    "input_cost",
    "output_cost",
    "cache_write_cost",
    "cache_read_cost",
    "total_cost",
    "uncached_cost",
    "unpriced_requests",
)


def _sum_columns() -> list[Any]:
    priced = U.total_cost.is_not(None)
    return [
        func.count().label("request_count"),
        func.coalesce(func.sum(U.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(U.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(U.cache_write_5m_tokens), 0).label("cache_write_5m_tokens"),
        func.coalesce(func.sum(U.cache_write_1h_tokens), 0).label("cache_write_1h_tokens"),
        func.coalesce(func.sum(U.cache_read_tokens), 0).label("cache_read_tokens"),
        func.coalesce(func.sum(U.input_cost), 0).label("input_cost"),
        func.coalesce(func.sum(U.output_cost), 0).label("output_cost"),
        func.coalesce(func.sum(U.cache_write_cost), 0).label("cache_write_cost"),
        func.coalesce(func.sum(U.cache_read_cost), 0).label("cache_read_cost"),
        func.coalesce(func.sum(U.total_cost), 0).label("total_cost"),
        func.coalesce(func.sum(case((priced, U.uncached_cost), else_=0)), 0).label("uncached_cost"),
        func.coalesce(func.sum(case((priced, 0), else_=1)), 0).label("unpriced_requests"),
    ]


def _totals(row: Any) -> UsageTotals:
    values: dict[str, Any] = {name: int(getattr(row, name)) for name in _SUM_FIELDS}
    return UsageTotals(**values)


class UsageStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    def _group_key(self, group_by: str) -> Any:
        if group_by == "day":
            if self._db.dialect == "sqlite":
                return func.date(U.created_at)
            return cast(U.created_at, Date)
        return {"model": U.model, "session": U.session_id, "agent": U.agent_id}[group_by]

    async def per_model(self, filters: UsageFilters) -> dict[str, UsageTotals]:
        query = select(U.model, *_sum_columns()).where(*filters.clauses()).group_by(U.model).order_by(U.model)
        async with self._db.read() as db:
            rows = (await db.execute(query)).all()
        return {row.model: _totals(row) for row in rows}

    async def grouped(self, filters: UsageFilters, group_by: str) -> list[tuple[str, UsageTotals]]:
        key = self._group_key(group_by).label("group_key")
        query = select(key, *_sum_columns()).where(*filters.clauses()).group_by(key).order_by(key)
        async with self._db.read() as db:
            rows = (await db.execute(query)).all()
        return [(str(row.group_key), _totals(row)) for row in rows]

    async def spent_since(self, agent_id: str, since: datetime) -> int:
        """Priced spend of one agent since a moment, nano-USD (for budgets)."""
        query = select(func.coalesce(func.sum(U.total_cost), 0)).where(U.agent_id == agent_id, U.created_at >= since)
        async with self._db.read() as db:
            return int(await db.scalar(query) or 0)

    async def insert(self, record: UsageRecord) -> None:
        async with self._db.write() as db:
            db.add(record)
