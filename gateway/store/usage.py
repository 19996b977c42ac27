"""Usage reports: integer sums in SQL, grouped as asked; dollars are made at the edge.

Whole UTC days are read from `usage_daily` (kept equal to `usage_records` by triggers, see migration 0002) and the
partial days at a window's edges from `usage_records` itself, so a report over millions of rows reads thousands.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import Date, and_, case, cast, func, or_, select, union_all, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from .base import Database
from .models import UsageDaily, UsageRecord
from .reservations import attach_usage, release_for_usage
from .upserts import PROVISIONAL, insert_usage_once, save_usage, update_provisional
from .usage_row import UsageRow

U = UsageRecord
D = UsageDaily


@dataclass(frozen=True, slots=True)
class UsageFilters:
    session_id: str | None = None
    agent_id: str | None = None
    model: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    key_id: str | None = None

    def clauses(self) -> list[ColumnElement[bool]]:
        out: list[ColumnElement[bool]] = []
        if self.session_id is not None:
            out.append(U.session_id == self.session_id)
        if self.agent_id is not None:
            out.append(U.agent_id == self.agent_id)
        if self.model is not None:
            out.append(U.model == self.model)
        if self.key_id is not None:
            out.append(U.key_id == self.key_id)
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
    # Of the above, the gateway's estimate (streams cut short, docs/SQL.md): rows, output tokens, nano-USD.
    estimated_requests: int = 0
    estimated_output_tokens: int = 0
    estimated_cost: int = 0

    @property
    def total_tokens(self) -> int:
        """As in chat.stream.end: input + output + cache writes + cache reads."""
        return (
            self.input_tokens
            + self.output_tokens
            + self.cache_write_5m_tokens
            + self.cache_write_1h_tokens
            + self.cache_read_tokens
        )

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
    "estimated_requests",
    "estimated_output_tokens",
    "estimated_cost",
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
        func.coalesce(func.sum(case((U.estimated, 1), else_=0)), 0).label("estimated_requests"),
        func.coalesce(func.sum(U.estimated_output_tokens), 0).label("estimated_output_tokens"),
        func.coalesce(func.sum(case((priced, U.estimated_cost), else_=0)), 0).label("estimated_cost"),
    ]


def _totals(row: Any) -> UsageTotals:
    values: dict[str, Any] = {name: int(getattr(row, name)) for name in _SUM_FIELDS}
    return UsageTotals(**values)


def _midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class _Split:
    """A time window cut into whole UTC days (read from `usage_daily`) and the partial days at its edges (read from
    `usage_records` by its created_at index). Together they cover the window exactly once."""

    first_day: date | None  # whole days first_day <= day < end_day; None = unbounded
    end_day: date | None
    edges: tuple[tuple[datetime | None, datetime | None], ...]  # [start, end) ranges of raw rows

    @classmethod
    def of(cls, since: datetime | None, until: datetime | None) -> _Split | None:
        """None when the window lies within one day: then raw rows alone answer it, cheaply."""
        since = since.astimezone(UTC) if since is not None else None
        until = until.astimezone(UTC) if until is not None else None
        first = None
        if since is not None:
            first = since.date() if since == _midnight(since.date()) else since.date() + timedelta(days=1)
        end = until.date() if until is not None else None
        if first is not None and end is not None and first >= end:
            return None
        edges: list[tuple[datetime | None, datetime | None]] = []
        if since is not None and first is not None and since != _midnight(first):
            edges.append((since, _midnight(first)))
        if until is not None and end is not None and until != _midnight(end):
            edges.append((_midnight(end), until))
        return cls(first, end, tuple(edges))


class UsageStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    def _day(self) -> Any:
        if self._db.dialect == "sqlite":
            return func.date(U.created_at)
        return cast(U.created_at, Date)

    def _raw_key(self, group_by: str) -> Any:
        if group_by == "day":
            return self._day()
        return {"model": U.model, "session": U.session_id, "agent": U.agent_id, "key": U.key_id}[group_by]

    async def per_model(self, filters: UsageFilters) -> dict[str, UsageTotals]:
        return dict(await self.grouped(filters, "model"))

    async def grouped(self, filters: UsageFilters, group_by: str) -> list[tuple[str, UsageTotals]]:
        """Totals per group, ordered by group key. Exactly SQL over `usage_records`; read from the daily rollup
        wherever whole days allow it (it keeps neither sessions nor keys). Requests without a key group under ""."""
        raw_only = filters.session_id is not None or filters.key_id is not None or group_by in ("session", "key")
        split = None if raw_only else _Split.of(filters.since, filters.until)
        query = self._raw_query(filters, group_by) if split is None else self._rollup_query(filters, group_by, split)
        async with self._db.read() as db:
            rows = (await db.execute(query)).all()
        return [("" if row.group_key is None else str(row.group_key), _totals(row)) for row in rows]

    def _raw_query(self, filters: UsageFilters, group_by: str) -> Any:
        key = self._raw_key(group_by).label("group_key")
        return select(key, *_sum_columns()).where(*filters.clauses()).group_by(key).order_by(key)

    def _rollup_query(self, filters: UsageFilters, group_by: str, split: _Split) -> Any:
        rollup_key = {"model": D.model, "agent": D.agent_id, "day": D.day}[group_by]
        days: list[ColumnElement[bool]] = []
        if split.first_day is not None:
            days.append(D.day >= split.first_day)
        if split.end_day is not None:
            days.append(D.day < split.end_day)
        if filters.agent_id is not None:
            days.append(D.agent_id == filters.agent_id)
        if filters.model is not None:
            days.append(D.model == filters.model)
        parts: list[Any] = [
            select(rollup_key.label("group_key"), *(getattr(D, name).label(name) for name in _SUM_FIELDS)).where(*days)
        ]
        if split.edges:
            ranges = [
                and_(
                    *([U.created_at >= start] if start is not None else []),
                    *([U.created_at < end] if end is not None else []),
                )
                for start, end in split.edges
            ]
            edge_filters = UsageFilters(agent_id=filters.agent_id, model=filters.model)
            key = self._raw_key(group_by).label("group_key")
            parts.append(select(key, *_sum_columns()).where(*edge_filters.clauses(), or_(*ranges)).group_by(key))
        both = union_all(*parts).subquery()
        sums = [func.sum(getattr(both.c, name)).label(name) for name in _SUM_FIELDS]
        return select(both.c.group_key, *sums).group_by(both.c.group_key).order_by(both.c.group_key)

    async def spent_since(self, agent_id: str, since: datetime) -> int:
        """Priced spend of one agent since a moment, nano-USD (for budgets)."""
        per_model = await self.per_model(UsageFilters(agent_id=agent_id, since=since))
        return sum(t.total_cost for t in per_model.values())

    async def insert(self, record: UsageRow) -> None:
        """A request's final row (its provisional row, if it has one, made final)."""
        await self._db.run(lambda conn: save_usage(conn, record), write=True)

    async def provisional_rows(self) -> dict[str, list[str]]:
        """Session id -> ids of its usage rows still provisional (requests streaming now, or orphaned by a crash)."""
        query = select(U.session_id, U.id).where(U.status == PROVISIONAL)
        found: dict[str, list[str]] = {}
        for session_id, usage_id in await self._db.run(lambda conn: conn.execute(query).all()):
            found.setdefault(session_id, []).append(usage_id)
        return found

    async def recover_interrupted(self, *, ids: Sequence[str] = (), session_id: str | None = None) -> int:
        """Provisional rows of requests whose process died become final as they were last checkpointed, status
        `interrupted` (by id, or every one of a session whose lock the caller holds); their budget reservations go.
        Updated in place: the rollup keeps counting them once."""
        where = U.id.in_(list(ids)) if session_id is None else U.session_id == session_id

        def work(conn: Connection) -> int:
            found = [row[0] for row in conn.execute(select(U.id).where(where, U.status == PROVISIONAL))]
            if not found:
                return 0
            conn.execute(update(U).where(U.id.in_(found), U.status == PROVISIONAL).values(status="interrupted"))
            release_for_usage(conn, found)
            return len(found)

        return await self._db.run(work, write=True)

    async def checkpoint(self, record: UsageRow) -> None:
        """A provisional row updated with what is known now (never a row already final)."""
        await self._db.run(lambda conn: update_provisional(conn, record), write=True, background=True)

    async def begin(
        self, record: UsageRow, reservation_ids: Sequence[str] = (), wanted: Callable[[], bool] = lambda: True
    ) -> None:
        """A request's provisional row, at its first upstream event (a no-op if its final row is there already), and
        its budget reservations told that this row now counts part of their worst case. Skipped when no longer
        `wanted` by the time the writer gets to it (the request has ended: its final row is written next), which
        under load spares a commit per short request."""

        def work(conn: Connection) -> None:
            if not wanted():
                return
            insert_usage_once(conn, record)
            attach_usage(conn, reservation_ids, record.id)

        await self._db.run(work, write=True, background=True)
