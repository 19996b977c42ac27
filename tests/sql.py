"""Plain SQL on the test's database, whichever it is (SQLite file or PostgreSQL), through SQLAlchemy."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool


async def sql_rows(db_url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = create_async_engine(db_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return [dict(row._mapping) for row in (await conn.execute(text(sql), params)).all()]
    finally:
        await engine.dispose()


async def sql_exec(db_url: str, sql: str, **params: Any) -> None:
    engine = create_async_engine(db_url, poolclass=NullPool)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql), params)
    finally:
        await engine.dispose()
