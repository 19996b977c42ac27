"""Writes that stay exact when several processes (or a retry after an unclear commit) write at once: each is one
statement the database settles itself (INSERT ... ON CONFLICT, which SQLite and PostgreSQL both speak)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession as DbSession

from ..models import TokenCalibration, UsageRecord, utcnow


def _insert(db: DbSession) -> Any:
    return pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert


async def insert_usage_once(db: DbSession, record: UsageRecord) -> bool:
    """Insert the row unless its id is already there; False when it was. A save retried after a commit whose answer
    was lost (the connection dropped) must not count the same request twice."""
    values = {
        attr.key: getattr(record, attr.key)
        for attr in inspect(UsageRecord).column_attrs
        if getattr(record, attr.key) is not None  # unset columns take their defaults
    }
    stmt = _insert(db)(UsageRecord).values(**values).on_conflict_do_nothing(index_elements=[UsageRecord.id])
    result = await db.execute(stmt)
    return bool(getattr(result, "rowcount", 0))


async def add_calibration(db: DbSession, model: str, estimated: int, reported: int) -> None:
    """One atomic upsert, incremented in SQL: processes finishing turns of one model at once neither lose a sample
    nor collide on the first insert (UPDATE-then-INSERT would, on PostgreSQL)."""
    now = utcnow()
    stmt = _insert(db)(TokenCalibration).values(
        model=model, samples=1, estimated_tokens=estimated, reported_tokens=reported, updated_at=now
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[TokenCalibration.model],
        set_={
            "samples": TokenCalibration.samples + 1,
            "estimated_tokens": TokenCalibration.estimated_tokens + estimated,
            "reported_tokens": TokenCalibration.reported_tokens + reported,
            "updated_at": now,
        },
    )
    await db.execute(stmt)
