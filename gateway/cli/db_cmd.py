"""`agentspace db copy --from URL --to URL`: move a deployment's data to another database (SQLite to PostgreSQL),
verified, in one transaction on the target."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

BATCH_SIZE = 1000


def register(sub: Any) -> None:
    parser = sub.add_parser("db", help="database maintenance: copy a deployment's data to another database")
    commands = parser.add_subparsers(dest="db_command", required=True)
    copy = commands.add_parser(
        "copy",
        help="copy sessions, messages, usage and calibration into another database, and verify it",
        description="Migrates both databases to the newest schema, copies every row in batches in one transaction "
        "on the target, and commits only if row counts and token and cost sums match the source. Stop the "
        "gateways writing to the source first. A bare file path means a SQLite file.",
    )
    copy.add_argument("--from", dest="source", required=True, help="source database URL (or a SQLite file path)")
    copy.add_argument("--to", dest="target", required=True, help="target database URL, e.g. postgresql+asyncpg://...")
    copy.add_argument("--force", action="store_true", help="replace what the target holds instead of refusing")
    copy.add_argument("--batch-size", type=int, default=BATCH_SIZE, help=f"rows per insert (default {BATCH_SIZE})")
    copy.set_defaults(handler=run_copy)


def database_url(value: str) -> str:
    return value if "://" in value else f"sqlite+aiosqlite:///{value}"


def run_copy(args: argparse.Namespace) -> int:
    # The database stack loads when the command runs, so the CLI itself starts fast.
    from gateway.store.copy import CopyError

    source, target = database_url(args.source), database_url(args.target)
    if source == target:
        raise ValueError("--from and --to name the same database")
    try:
        report = asyncio.run(_copy(source, target, force=args.force, batch_size=max(1, args.batch_size)))
    except CopyError as exc:
        print(f"agentspace: {exc}", file=sys.stderr)
        return 1
    for table, count in report.rows.items():
        print(f"{table:<18} {count:>10} rows")
    cost = report.checks["usage_records"][3]
    print(f"verified: row counts, token and cost sums match (total cost {int(cost)} nano-USD = ${int(cost) / 1e9:.6f})")
    return 0


async def _copy(source: str, target: str, *, force: bool, batch_size: int) -> Any:
    from gateway.store.copy import copy_database
    from gateway.store.db import create_engine, upgrade_to_head

    src, dst = create_engine(source), create_engine(target)
    try:
        # As the gateway does at start: both sides at the newest schema, so every column has a place to go.
        await upgrade_to_head(src)
        await upgrade_to_head(dst)
        return await copy_database(
            src, dst, force=force, batch_size=batch_size, progress=lambda table, n: _progress(table, n)
        )
    finally:
        await src.dispose()
        await dst.dispose()


def _progress(table: str, copied: int) -> None:
    if copied % (BATCH_SIZE * 10) == 0:
        print(f"  {table}: {copied} rows so far", file=sys.stderr)
