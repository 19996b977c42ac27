"""Test databases: a fresh PostgreSQL database made and dropped through the admin URL, and SQL checks that work on
SQLite and PostgreSQL alike (tests never open sqlite3 directly on a database the PostgreSQL leg also uses)."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from gateway.store.db import create_engine, upgrade_to_head

T = TypeVar("T")


def _dsn(url: str) -> str:
    """The SQLAlchemy URL as plain asyncpg takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _with_database(url: str, name: str) -> str:
    return make_url(url).set(database=name).render_as_string(hide_password=False)


async def create_database(admin_url: str, *, migrate: bool = True) -> str:
    name = f"agentspace_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(_dsn(admin_url))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = _with_database(admin_url, name)
    if migrate:
        engine = create_engine(url)
        try:
            await upgrade_to_head(engine)
        finally:
            await engine.dispose()
    return url


async def drop_database(admin_url: str, url: str) -> None:
    admin = await asyncpg.connect(_dsn(admin_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    finally:
        await admin.close()


async def reset_database(url: str) -> None:
    """Empty the gateway's tables (TRUNCATE takes milliseconds; CREATE/DROP DATABASE per test took ~0.5 s, most
    of it DROP's checkpoint). Connections a previous test left behind are ended first, so none can hold a lock."""
    conn = await asyncpg.connect(_dsn(url))
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        # Every table but alembic's, so tables added by later migrations are emptied too.
        tables = await conn.fetch(
            "SELECT quote_ident(tablename) FROM pg_tables"
            " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
        await conn.execute(f"TRUNCATE {', '.join(t[0] for t in tables)}")
    finally:
        await conn.close()


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code (session fixtures) without touching pytest-asyncio's loops."""
    result: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


async def rows(db_url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of one query, through SQLAlchemy, on whichever database the test runs on."""
    engine = create_async_engine(db_url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in (await conn.execute(text(sql), params)).all()]
    finally:
        await engine.dispose()


async def scalar(db_url: str, sql: str, **params: Any) -> Any:
    found = await rows(db_url, sql, **params)
    return found[0][0] if found else None
