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


async def calibrate_output(db_url: str, model: str, *, estimated: int, reported: int) -> None:
    """As if Anthropic had reported `reported` output tokens for every `estimated` of ours in `model`'s complete
    replies (10 samples), with no input samples."""
    await sql_exec(
        db_url,
        "INSERT INTO token_calibration (model, samples, estimated_tokens, reported_tokens, updated_at, output_samples,"
        " output_estimated_tokens, output_reported_tokens) VALUES (:m, 0, 0, 0, '2026-01-01', 10, :e, :r)",
        m=model,
        e=estimated,
        r=reported,
    )
