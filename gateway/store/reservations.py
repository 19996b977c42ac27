"""Budget reservations (docs/BUDGETS.md): the requests in flight, held in SQL so every process sharing the database
sees every other's, checked and written in one transaction under a lock per holder.

The lock: on PostgreSQL a transaction-scoped advisory lock per holder (two-key form, so it never meets the session
locks of chat/pg_locks.py, which use the one-key form); on SQLite the database's one writer, taken by the
transaction's first statement (a DELETE of expired rows), so the reads after it are the latest and no other process
can write until the commit.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

from sqlalchemy import Table, case, delete, func, select, text, update
from sqlalchemy.engine import Connection

from .base import Database
from .models import BudgetReservation, UsageDaily, UsageRecord

_R = cast(Table, BudgetReservation.__table__)
_U = cast(Table, UsageRecord.__table__)
_D = cast(Table, UsageDaily.__table__)
# The first key of the two-key advisory locks taken here ("SP"end).
_LOCK_SPACE = 0x5350
_PG_LOCK = text("SELECT pg_advisory_xact_lock(:space, :key)")


@dataclass(frozen=True, slots=True)
class HolderSpend:
    """Whose caps ("agent:<id>" / "key:<id>"), and since when (one start per capped period) its spend is summed."""

    ref: str
    kind: str  # "agent" | "key"
    target: str  # the agent id or the key id
    starts: tuple[datetime, ...]


@dataclass(frozen=True, slots=True)
class Held:
    """What a holder has spent since each start (its usage rows, provisional ones included) and what the requests it
    has in flight may still add (their worst cases, less what their usage rows already count)."""

    ref: str
    spent: tuple[int, ...]
    in_flight: int


def _lock_key(ref: str) -> int:
    return zlib.crc32(ref.encode()) - 2**31  # a signed int4, the same in every process


def _spent(holder: HolderSpend, since: datetime) -> Any:
    if holder.kind == "agent":
        # Whole UTC days from the rollup: the periods start at midnight.
        day: date = since.date()
        query = select(func.coalesce(func.sum(_D.c.total_cost), 0)).where(
            _D.c.agent_id == holder.target, _D.c.day >= day
        )
    else:
        query = select(func.coalesce(func.sum(_U.c.total_cost), 0)).where(
            _U.c.key_id == holder.target, _U.c.created_at >= since
        )
    return query.scalar_subquery()


def _in_flight(ref: str, now: datetime) -> Any:
    counted = func.coalesce(_U.c.total_cost, 0)
    left = case((_R.c.amount > counted, _R.c.amount - counted), else_=0)
    query = (
        select(func.coalesce(func.sum(left), 0))
        .select_from(_R.outerjoin(_U, _U.c.id == _R.c.usage_id))
        .where(_R.c.holder == ref, _R.c.expires_at > now)
    )
    return query.scalar_subquery()


def held_now(conn: Connection, holder: HolderSpend, now: datetime) -> Held:
    """One statement, so one snapshot on PostgreSQL too: a provisional row committed between two reads would
    otherwise be missing from the spend and already taken off its reservation."""
    row = conn.execute(select(_in_flight(holder.ref, now), *(_spent(holder, since) for since in holder.starts))).one()
    return Held(holder.ref, tuple(int(v or 0) for v in row[1:]), int(row[0] or 0))


class ReservationStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def reserve(
        self,
        holders: Sequence[HolderSpend],
        amount: int,
        *,
        owner: str,
        now: datetime,
        expires_at: datetime,
        judge: Callable[[list[Held]], None],
    ) -> list[str]:
        """Lock the holders, read what each has spent and holds, let `judge` refuse (it raises, nothing is written),
        then hold `amount` for each: one row per holder, their ids returned."""
        refs = sorted(h.ref for h in holders)
        ids = [str(uuid.uuid4()) for _ in holders]

        def work(conn: Connection) -> list[str]:
            # First statement a write: on SQLite it takes the writer's lock for the whole check.
            conn.execute(delete(_R).where(_R.c.holder.in_(refs), _R.c.expires_at <= now))
            if conn.dialect.name == "postgresql":
                for ref in refs:  # one order everywhere: no deadlock
                    conn.execute(_PG_LOCK, {"space": _LOCK_SPACE, "key": _lock_key(ref)})
            judge([held_now(conn, holder, now) for holder in holders])
            rows = [
                {
                    "id": rid,
                    "holder": h.ref,
                    "amount": amount,
                    "owner": owner,
                    "created_at": now,
                    "expires_at": expires_at,
                }
                for rid, h in zip(ids, holders, strict=True)
            ]
            conn.execute(_R.insert(), rows)
            return ids

        return await self._db.run(work, write=True)

    async def held(self, holder: HolderSpend, now: datetime) -> Held:
        return await self._db.run(lambda conn: held_now(conn, holder, now))

    async def release(self, ids: Sequence[str]) -> None:
        if ids:
            await self._db.run(lambda conn: conn.execute(delete(_R).where(_R.c.id.in_(list(ids)))), write=True)

    async def renew(self, owner: str, expires_at: datetime) -> int:
        """Push the lease of every reservation `owner` holds; how many there were."""
        query = update(_R).where(_R.c.owner == owner).values(expires_at=expires_at)
        return await self._db.run(lambda conn: int(conn.execute(query).rowcount or 0), write=True)


def attach_usage(conn: Connection, reservation_ids: Sequence[str], usage_id: str) -> None:
    """The request's usage row exists now: what it counts is no longer held twice (run with the row's insert)."""
    if reservation_ids:
        conn.execute(update(_R).where(_R.c.id.in_(list(reservation_ids))).values(usage_id=usage_id))


def release_for_usage(conn: Connection, usage_ids: Sequence[str]) -> None:
    """The reservations of requests whose usage rows were just made final by recovery (their process is gone)."""
    conn.execute(delete(_R).where(_R.c.usage_id.in_(list(usage_ids))))
