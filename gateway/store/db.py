"""Engine creation (SQLite pragmas, PostgreSQL pool bounds) and the schema upgrade run at start-up."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SATimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.ext.asyncio import AsyncSession as DbSession

from gateway.settings import SQLITE_SYNCHRONOUS

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same in every gateway process sharing one PostgreSQL database.
MIGRATION_LOCK_KEY = 0x4147_5357  # "AGSW"
# asyncpg waits 60 s for a server by default; during an outage a client should hear DATABASE_UNAVAILABLE sooner.
PG_CONNECT_TIMEOUT_S = 5.0
# Per-connection server settings. The keepalives make the server notice within about a minute that the machine on
# the other end is gone (power loss, network cut; a process that merely dies closes its sockets at once): its session
# locks are then freed and its connection slots returned. The server's default waits for the OS, usually 2 hours.
PG_KEEPALIVES = {"tcp_keepalives_idle": "30", "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3"}


def pg_connect_args(application_name: str, **extra: object) -> dict[str, object]:
    return {
        "timeout": PG_CONNECT_TIMEOUT_S,
        "server_settings": {"application_name": application_name, **PG_KEEPALIVES},
        **extra,
    }


# SQLSTATE classes that mean "the database cannot take this now", not "this statement is wrong": 08 connection
# exception; 53 insufficient resources (disk full, out of memory, too many connections); 57P01-57P03 admin/crash
# shutdown and "cannot connect now"; 58030 I/O error; 25006 a read-only transaction (a standby, mid-failover).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P01", "57P02", "57P03", "58030", "25006")
# SQLite's equivalents (sqlite3 errors carry the name, with extended codes such as SQLITE_IOERR_WRITE): the file is
# read-only (or made immutable), the disk is full, a read or write failed, the file cannot be opened, it is locked.
_UNAVAILABLE_SQLITE = (
    "SQLITE_READONLY",
    "SQLITE_FULL",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
)


def migrations_dir() -> Path:
    import migrations

    return Path(migrations.__file__).parent


def sqlite_pragmas_for(synchronous: str) -> Callable[[Any, Any], None]:
    """The connect hook for SQLite. `synchronous` (docs/SECURITY.md): FULL (the default) syncs the WAL on every
    commit, so what was acknowledged survives a power loss; NORMAL syncs only at checkpoints, so a power loss may drop
    the last commits (never corrupting the file): faster, and the usual trade for caches, not for a ledger."""
    if synchronous not in SQLITE_SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {', '.join(SQLITE_SYNCHRONOUS)}, got {synchronous!r}")

    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    return pragmas


def json_loads(text: str | bytes) -> Any:
    """Reads JSON columns. orjson decodes several times faster than the stdlib, which matters for loading a long
    session's history; the stdlib still reads what orjson refuses (lone surrogates, NaN, huge integers)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def create_engine(
    db_url: str, *, pool_size: int = 5, max_overflow: int = 5, sqlite_synchronous: str = "FULL"
) -> AsyncEngine:
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        database = url.database
        if database and database != ":memory:":
            private_file(Path(database).expanduser())
        engine = create_async_engine(url, connect_args={"timeout": 10}, json_deserializer=json_loads)
        event.listen(engine.sync_engine, "connect", sqlite_pragmas_for(sqlite_synchronous))
        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
        json_deserializer=json_loads,
        # A request waiting this long for a pooled connection gets DATABASE_UNAVAILABLE rather than hanging.
        pool_timeout=10,
        connect_args=pg_connect_args("agentspace"),
    )


def private_file(path: Path) -> None:
    """Create the database file (and its folder) readable by its owner only, before SQLite does with its 0644;
    SQLite gives the -wal and -shm files the main file's mode. A wider existing file is left alone, with a warning."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("%s is readable by other users (mode %o); `chmod 600` it", path, mode)
    except OSError:
        pass  # a read-only location: SQLite will say what is wrong when it opens the file


def is_connectivity_error(exc: BaseException) -> bool:
    """True when the database cannot serve us now (unreachable, read-only, full, failing I/O): worth retrying later,
    and DATABASE_UNAVAILABLE to a client, not a bug in the SQL."""
    if isinstance(exc, (OSError, SATimeoutError)):  # refused, reset, connect timeout; pool checkout timeout
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES):
            return True
        sqlite_name = getattr(exc.orig, "sqlite_errorname", None)
        if isinstance(sqlite_name, str) and sqlite_name.startswith(_UNAVAILABLE_SQLITE):
            return True
        if isinstance(exc.orig, OSError):
            return True
    return _sounds_unreachable(exc)


def _sounds_unreachable(exc: BaseException) -> bool:
    # Drivers do not all carry a SQLSTATE for a closed socket (asyncpg: "connection is closed"), nor SQLite for
    # a locked file.
    text = str(exc).lower()
    return any(
        s in text
        for s in (
            "connection is closed",
            "connection was closed",
            "connection refused",
            "could not connect",
            "server closed",
            "database is locked",
            "cannot connect now",
            "the database system is",
            "readonly database",
            "disk i/o error",
            "database or disk is full",
            "unable to open database file",
        )
    )


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[DbSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _upgrade_lock(connection: Connection) -> None:
    # Several processes may start at once (`agentspace serve --workers N`, or several machines on PostgreSQL): one
    # migrates, the others wait here, then find nothing to do.
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    elif connection.dialect.name == "sqlite":
        begin_immediate(connection)


def begin_immediate(connection: Connection) -> None:
    """Start a SQLite write transaction holding the database's write lock from its first statement.

    The driver would otherwise begin a deferred transaction at the first INSERT/UPDATE/DELETE, leaving earlier reads
    outside it, and a transaction that read first cannot wait for the write lock: SQLite answers "database is locked"
    at once when another process wrote since. In one process the store's write lock hid both; with several processes
    on one file (`--workers`), BEGIN IMMEDIATE makes every unit of work that writes a transaction of its own,
    serialized across processes, waiting (busy_timeout) for the lock instead of failing."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _upgrade(connection: Connection) -> None:
    _upgrade_lock(connection)
    command.upgrade(alembic_config(connection), "head")


async def upgrade_to_head(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(_upgrade)
    log.info("database schema is at head")
