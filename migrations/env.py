"""Alembic environment. The app passes its own connection (config.attributes["connection"]); the `alembic` command
line builds an engine from AGENTSPACE_DB_URL, the same URL the gateway reads."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from gateway.settings import Settings
from gateway.store.db import create_engine
from gateway.store.models import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("connection") is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_from_env() -> None:
    engine = create_engine(Settings.from_env().db_url)
    try:
        async with engine.begin() as connection:
            from gateway.store.db import _upgrade_lock

            await connection.run_sync(_upgrade_lock)
            await connection.run_sync(_run)
    finally:
        await engine.dispose()


def run_offline() -> None:
    context.configure(
        url=Settings.from_env().db_url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if context.is_offline_mode():
    run_offline()
elif connection is not None:
    _run(connection)
else:
    asyncio.run(_run_from_env())
