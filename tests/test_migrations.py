"""Alembic owns the schema: the migrations build exactly the models' tables, from the CLI and at start-up."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from gateway.store.db import create_engine, upgrade_to_head
from gateway.store.models import Base

REPO = Path(__file__).resolve().parent.parent


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_models_and_migrations_agree(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        await upgrade_to_head(engine)
        async with engine.connect() as connection:
            diff = await connection.run_sync(_diff)
    finally:
        await engine.dispose()
    assert diff == [], f"models and migrations differ; write a migration: {diff}"


def test_alembic_cli_upgrades_the_database_named_by_env(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    env = {**os.environ, "AGENTSPACE_DB_URL": f"sqlite+aiosqlite:///{db}"}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    tables = {row[0] for row in sqlite3.connect(db).execute("select name from sqlite_master")}
    assert {"sessions", "messages", "usage_records", "usage_by_model", "usage_by_day", "usage_by_session"} <= tables
    journal = sqlite3.connect(db).execute("pragma journal_mode").fetchone()[0]
    assert journal == "wal"
