"""Writes that stay exact when several processes (or a retry after an unclear commit) write at once: each is one
statement the database settles itself (INSERT ... ON CONFLICT, which SQLite and PostgreSQL both speak).

Plain functions of a sync Connection, run inside a `Database.run` unit of work; the statements are built once per
dialect (building one costs about what running it does).
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from .models import TokenCalibration, UsageRecord
from .usage_row import UsageRow

_U = cast(Table, UsageRecord.__table__)
_C = cast(Table, TokenCalibration.__table__)


def _insert(dialect: str) -> Any:
    return pg_insert if dialect == "postgresql" else sqlite_insert


@functools.cache
def _usage_once(dialect: str) -> Any:
    return _insert(dialect)(_U).on_conflict_do_nothing(index_elements=[_U.c.id])


@functools.cache
def _calibration(dialect: str) -> Any:
    stmt = _insert(dialect)(_C).values(
        model=bindparam("model"),
        samples=1,
        estimated_tokens=bindparam("estimated"),
        reported_tokens=bindparam("reported"),
        updated_at=bindparam("now"),
    )
    return stmt.on_conflict_do_update(
        index_elements=[_C.c.model],
        set_={
            "samples": _C.c.samples + 1,
            "estimated_tokens": _C.c.estimated_tokens + stmt.excluded.estimated_tokens,
            "reported_tokens": _C.c.reported_tokens + stmt.excluded.reported_tokens,
            "updated_at": stmt.excluded.updated_at,
        },
    )


@functools.cache
def _finish_provisional(columns: tuple[str, ...]) -> Any:
    return (
        update(_U)
        .where(_U.c.id == bindparam("row_id"), _U.c.status == PROVISIONAL)
        .values({name: bindparam(name) for name in columns})
    )


@functools.cache
def _save_final(dialect: str, columns: tuple[str, ...]) -> Any:
    stmt = _insert(dialect)(_U)
    return stmt.on_conflict_do_update(
        index_elements=[_U.c.id],
        set_={name: stmt.excluded[name] for name in columns if name != "id"},
        where=_U.c.status == PROVISIONAL,
    )


# A usage row's status while its request is still streaming: written at the request's first upstream event and
# updated at each checkpoint, it counts what is known so far; the request's end (or start-up recovery, after a crash)
# makes it final. Updated in place, so the usage_daily triggers move its sums rather than add them twice.
PROVISIONAL = "streaming"


@functools.cache
def _output_calibration(dialect: str) -> Any:
    stmt = _insert(dialect)(_C).values(
        model=bindparam("model"),
        output_samples=1,
        output_estimated_tokens=bindparam("estimated"),
        output_reported_tokens=bindparam("reported"),
        updated_at=bindparam("now"),
    )
    return stmt.on_conflict_do_update(
        index_elements=[_C.c.model],
        set_={
            "output_samples": _C.c.output_samples + 1,
            "output_estimated_tokens": _C.c.output_estimated_tokens + stmt.excluded.output_estimated_tokens,
            "output_reported_tokens": _C.c.output_reported_tokens + stmt.excluded.output_reported_tokens,
            "updated_at": stmt.excluded.updated_at,
        },
    )


def add_output_calibration(conn: Connection, model: str, estimated: int, reported: int, *, now: datetime) -> None:
    """One sample of a complete reply's output: our count of what it generated against what Anthropic reported."""
    params = {"model": model, "estimated": estimated, "reported": reported, "now": now}
    conn.execute(_output_calibration(conn.dialect.name), params)


def insert_usage_once(conn: Connection, record: UsageRow) -> bool:
    """Insert the row unless its id is already there; False when it was. A save retried after a commit whose answer
    was lost (the connection dropped) must not count the same request twice."""
    # Unset columns are left out, so their defaults apply.
    values = {c.key: v for c in _U.c if (v := getattr(record, c.key)) is not None}
    result = conn.execute(_usage_once(conn.dialect.name), values)
    return bool(result.rowcount)


def save_usage(conn: Connection, record: UsageRow) -> bool:
    """The final row of a request: inserted, or its provisional row (same id) made final, in one statement. False
    when the row was final already (a retried save), so nothing is counted twice. One upsert, so the provisional
    row's own write need not have ended: on PostgreSQL, where the two run in separate transactions at once, the
    database orders them (an insert still uncommitted is waited for, then updated), not the gateway (issue 15)."""
    values = {c.key: v for c in _U.c if (v := getattr(record, c.key)) is not None}
    result = conn.execute(_save_final(conn.dialect.name, tuple(values)), values)
    return bool(result.rowcount)


def update_provisional(conn: Connection, record: UsageRow) -> None:
    """A checkpoint of a request still streaming: what is known so far, never over a row already final."""
    values = {c.key: v for c in _U.c if c.key != "id" and (v := getattr(record, c.key)) is not None}
    values["status"] = PROVISIONAL
    conn.execute(_finish_provisional(tuple(values)), {"row_id": record.id, **values})


def add_calibration(conn: Connection, model: str, estimated: int, reported: int, *, now: datetime) -> None:
    """One atomic upsert, incremented in SQL: processes finishing turns of one model at once neither lose a sample
    nor collide on the first insert (UPDATE-then-INSERT would, on PostgreSQL)."""
    params = {"model": model, "estimated": estimated, "reported": reported, "now": now}
    conn.execute(_calibration(conn.dialect.name), params)
