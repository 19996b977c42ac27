"""Fill a gateway database directly with bulk inserts, before the gateway starts: many sessions, many usage rows,
and one long conversation. Deterministic (seeded), shaped like what the gateway itself writes.

    python -m bench.seed --db-url sqlite+aiosqlite:////tmp/x/gateway.db --usage 1000000 --sessions 100000

Reusable: `seed_database(url, ...)` creates the schema (alembic, as the gateway does) and returns what it made.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.store.db import create_engine, upgrade_to_head
from gateway.store.models import UsageRecord

from .history import history_session_id
from .history import session_rows as history_session_rows
from .rows import message_row, session_row

BATCH = 5000
WORDS = (
    "the gateway keeps every session message and usage record in sql so history survives restarts context window "
    "tokens cost cache prompt model reply stream thinking signature agent memory skill index query latency"
).split()
# (model, nano-USD per token for input, output, 5m write, 1h write, cache read); None = not priced.
MODELS: tuple[tuple[str, tuple[int, int, int, int, int] | None], ...] = (
    ("claude-sonnet-5-5", (2000, 10_000, 2500, 4000, 100)),
    ("claude-opus-5-5", (4000, 20_000, 5000, 8000, 200)),
    ("claude-haiku-5-5", (100, 500, 125, 200, 10)),
    ("claude-experimental-9", None),
)
MODEL_WEIGHTS = (60, 15, 24, 1)
AGENTS = ("default", "writer", "coder", "support", "research")
USAGE_COLUMNS = (
    "id", "session_id", "message_id", "agent_id", "model", "status", "input_tokens", "output_tokens",
    "cache_write_5m_tokens", "cache_write_1h_tokens", "cache_read_tokens", "input_cost", "output_cost",
    "cache_write_cost", "cache_read_cost", "total_cost", "uncached_cost", "rate_input", "rate_output",
    "rate_cache_write_5m", "rate_cache_write_1h", "rate_cache_read", "price_source", "price_tier",
    "estimated_input_tokens", "upstream_message_id", "duration_ms", "first_token_ms", "created_at",
)  # fmt: skip


def sqlite_stamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S.%f")  # SQLAlchemy's SQLite format, naive UTC


def usage_rows(
    count: int,
    days: int,
    sessions: int,
    now: datetime,
    rng: random.Random,
    stamp: Callable[[datetime], Any] = sqlite_stamp,
) -> Iterator[tuple[Any, ...]]:
    """Rows shaped like the gateway's, in time order (as they are appended), spread evenly over `days`, in
    USAGE_COLUMNS order and the driver's own types (`stamp` makes the timestamp). Shared by bench/usage_report.py
    and the benchmark's seed."""
    start = now - timedelta(days=days)
    step = days * 86_400 / count
    session_ids = [_id(rng) for _ in range(sessions)]
    session_agent = {s: rng.choice(AGENTS) for s in session_ids}
    for i in range(count):
        model, rates = rng.choices(MODELS, MODEL_WEIGHTS)[0]
        session = session_ids[rng.randrange(sessions)]
        inp, out = rng.randint(10, 4000), rng.randint(1, 2000)
        w5, w1, read = rng.choice((0, 0, rng.randint(0, 3000))), 0, rng.choice((0, rng.randint(0, 60_000)))
        if rates is None:
            costs: list[int | None] = [None] * 6
        else:
            parts = [inp * rates[0], out * rates[1], w5 * rates[2] + w1 * rates[3], read * rates[4]]
            costs = [*parts, sum(parts), (inp + w5 + w1 + read) * rates[0] + parts[1]]
        at = start + timedelta(seconds=i * step)
        yield (
            _id(rng), session, None, session_agent[session], model,
            "complete" if rng.random() > 0.03 else "cancelled", inp, out, w5, w1, read, *costs,
            *(rates or (None,) * 5), "builtin" if rates else None, None, inp, f"msg_{i:024x}", 900, 300, stamp(at),
        )  # fmt: skip


@dataclass(frozen=True)
class Seeded:
    sessions: int
    usage_rows: int
    long_session_id: str | None
    long_session_messages: int
    agents: list[str]
    sample_session_id: str | None
    seconds: float


def _id(rng: random.Random) -> str:
    """A random UUID-shaped id, as the gateway's uuid4 ids look (cheaper to make a million of)."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(WORDS, k=n))


def make_agent_dirs(home: Path, agents: tuple[str, ...]) -> None:
    """Non-default agents need a workspace folder, or session.list with their agentId answers AGENT_NOT_FOUND."""
    for agent in agents:
        if agent != "default":
            folder = home / "agents" / agent
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "SYSTEM.md").write_text(f"You are {agent}, a benchmark agent.\n")


def _session_rows(rng: random.Random, n: int, now: datetime) -> list[dict[str, Any]]:
    span = timedelta(days=365)
    rows = []
    for i in range(n):
        created = now - span + span * (i / max(1, n))
        rows.append(
            {
                "id": _id(rng),
                "agent_id": AGENTS[i % len(AGENTS)],
                "title": _words(rng, 6),
                "model": MODELS[0][0],
                "message_count": 10,
                "created_at": created,
                "updated_at": created + timedelta(minutes=rng.randint(1, 600)),
            }
        )
    return rows


def _long_session(rng: random.Random, messages: int, now: datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A conversation as turns store it: user text, then thinking (signed) and text from the assistant."""
    session_id = _id(rng)
    start = now - timedelta(days=1)
    rows: list[dict[str, Any]] = []
    for seq in range(messages):
        at = start + timedelta(seconds=seq * 30)
        if seq % 2 == 0:
            text = _words(rng, rng.randint(20, 120))
            content: list[dict[str, Any]] = [{"type": "text", "text": text}]
            role = "user"
        else:
            text = _words(rng, rng.randint(50, 300))
            thinking = {"type": "thinking", "thinking": _words(rng, rng.randint(20, 80)), "signature": "c2ln" * 16}
            content = [thinking, {"type": "text", "text": text}]
            role = "assistant"
        rows.append(message_row(_id(rng), session_id, seq, role, content, text, at))
    session = session_row(session_id, "A long conversation", messages, start, now)
    return session, rows


def _driver_value(value: Any, dialect: str) -> Any:
    """What the driver itself takes: SQLite gets the text SQLAlchemy would store, PostgreSQL native values."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S.%f") if dialect == "sqlite" else value
    if isinstance(value, list | dict):
        return json.dumps(value)
    return value


def driver_stamp(dialect: str) -> Callable[[datetime], Any]:
    if dialect == "sqlite":
        return lambda value: value.strftime("%Y-%m-%d %H:%M:%S.%f")
    return lambda value: value


async def bulk_insert(conn: AsyncConnection, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    """executemany straight to the driver (rows in its own types): the ORM's per-row work would double the time of
    a million-row seed."""
    marks = ", ".join("?" if conn.dialect.name == "sqlite" else f"${i + 1}" for i in range(len(columns)))
    await conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)


async def _insert_dicts(engine: AsyncEngine, table: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    columns = tuple(rows[0])
    for i in range(0, len(rows), BATCH):
        async with engine.begin() as conn:
            dialect = conn.dialect.name
            batch = [tuple(_driver_value(r[c], dialect) for c in columns) for r in rows[i : i + BATCH]]
            await bulk_insert(conn, table, columns, batch)


async def _without_indexes(engine: AsyncEngine, table: Table, load: Callable[[], Awaitable[None]]) -> None:
    """Load with the table's secondary indexes dropped, then build them again exactly as the models define them:
    one sorted build is far cheaper than a million scattered index inserts."""
    async with engine.begin() as conn:
        for index in table.indexes:
            await conn.run_sync(index.drop)
    await load()
    async with engine.begin() as conn:
        for index in table.indexes:
            await conn.run_sync(index.create)


async def seed_database(
    db_url: str,
    *,
    sessions: int,
    usage_count: int,
    long_session_messages: int,
    home: Path | None = None,
    days: int = 180,
    seed: int = 7,
    histories: tuple[int, ...] = (),
) -> Seeded:
    """Create the schema (as the gateway's start-up does), then bulk-insert everything; returns what was made."""
    started = time.perf_counter()
    rng = random.Random(seed)
    now = datetime.now(UTC).replace(tzinfo=None)
    if home is not None:
        make_agent_dirs(home, AGENTS)
    engine = create_engine(db_url)
    try:
        await upgrade_to_head(engine)
        session_rows = _session_rows(rng, sessions, now)
        await _insert_dicts(engine, "sessions", session_rows)

        async def load_usage() -> None:
            rows = usage_rows(usage_count, days, max(1, sessions), now, rng, driver_stamp(engine.dialect.name))
            while batch := list(itertools.islice(rows, BATCH)):
                async with engine.begin() as conn:
                    await bulk_insert(conn, "usage_records", USAGE_COLUMNS, batch)

        if usage_count:
            await _without_indexes(engine, UsageRecord.__table__, load_usage)  # type: ignore[arg-type]
        async with engine.connect() as conn:
            # Any session that has usage, for the one-session report.
            sample = (await conn.exec_driver_sql("SELECT session_id FROM usage_records LIMIT 1")).scalar()
        long_id = None
        if long_session_messages:
            session, messages = _long_session(rng, long_session_messages, now)
            await _insert_dicts(engine, "sessions", [session])
            await _insert_dicts(engine, "messages", messages)
            long_id = session["id"]
        for n in histories:  # the history scenario's conversations (bench/history.py)
            if n:
                session, messages = history_session_rows(history_session_id(n), n, now)
                await _insert_dicts(engine, "sessions", [session])
                await _insert_dicts(engine, "messages", messages)
    finally:
        await engine.dispose()
    return Seeded(
        sessions=sessions,
        usage_rows=usage_count,
        long_session_id=long_id,
        long_session_messages=long_session_messages,
        agents=list(AGENTS),
        sample_session_id=sample,
        seconds=round(time.perf_counter() - started, 2),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="bulk-fill a gateway database for benchmarks")
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--home", type=Path, help="AGENTSPACE_HOME, to create the seeded agents' folders")
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--usage", type=int, default=1_000_000)
    parser.add_argument("--messages", type=int, default=1000, help="length of the one long session")
    parser.add_argument("--history", default="", help="comma-separated lengths of the history scenario's sessions")
    args = parser.parse_args()
    seeded = asyncio.run(
        seed_database(
            args.db_url,
            sessions=args.sessions,
            usage_count=args.usage,
            long_session_messages=args.messages,
            home=args.home,
            histories=tuple(int(n) for n in args.history.split(",") if n),
        )
    )
    print(json.dumps(asdict(seeded), indent=2))


if __name__ == "__main__":
    main()
