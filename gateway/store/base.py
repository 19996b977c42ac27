"""One AsyncSession per unit of work; on SQLite, writes are serialized in-process (it has one writer)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlalchemy.ext.asyncio import AsyncSession as DbSession

from ..db import is_connectivity_error
from ..errors import DatabaseUnavailable


class Database:
    def __init__(self, engine: AsyncEngine, sessionmaker: async_sessionmaker[DbSession]) -> None:
        self.engine = engine
        self.sessionmaker = sessionmaker
        self.dialect = engine.dialect.name
        # PostgreSQL handles concurrent writers itself; SQLite would answer "database is locked" instead.
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self.dialect == "sqlite" else None

    @asynccontextmanager
    async def read(self) -> AsyncIterator[DbSession]:
        try:
            async with self.sessionmaker() as db:
                yield db
        except (DBAPIError, SATimeoutError, OSError) as exc:
            if is_connectivity_error(exc):
                raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc
            raise

    @asynccontextmanager
    async def write(self) -> AsyncIterator[DbSession]:
        try:
            if self._write_lock is None:
                async with self.sessionmaker() as db, db.begin():
                    yield db
            else:
                async with self._write_lock, self.sessionmaker() as db, db.begin():
                    yield db
        except (DBAPIError, SATimeoutError, OSError) as exc:
            if is_connectivity_error(exc):
                raise DatabaseUnavailable(f"database unavailable: {type(exc).__name__}") from exc
            raise
