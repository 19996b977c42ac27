"""`agentspace token create --name NAME | list | revoke NAME | budget NAME`: named gateway keys, kept in the database
(only their SHA-256), each with its own usage and optional spend caps. The single token of `token create` without
`--name` stays as it was (gateway/cli/token_cmd.py)."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.protocol import dump, iso
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.store import Store

T = TypeVar("T")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NANO_PER_USD = 1_000_000_000


def add_cap_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--daily-usd", type=usd, metavar="USD", help="spend cap per UTC day")
    parser.add_argument("--monthly-usd", type=usd, metavar="USD", help="spend cap per calendar month (UTC)")


def register(token_sub: Any) -> None:
    listed = token_sub.add_parser("list", help="named keys: created, last used, spend, caps, revoked")
    listed.add_argument("--json", action="store_true", help="one JSON object per key")
    listed.set_defaults(handler=list_keys)
    revoke = token_sub.add_parser("revoke", help="revoke a named key at once (its usage stays, under its name)")
    revoke.add_argument("name")
    revoke.set_defaults(handler=revoke_key)
    budget = token_sub.add_parser("budget", help="set or clear a named key's spend caps")
    budget.add_argument("name")
    add_cap_options(budget)
    budget.add_argument("--clear", action="store_true", help="remove both caps")
    budget.set_defaults(handler=set_budget)


def usd(text: str) -> int:
    """Dollars to nano-dollars, exactly (never through a float)."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount of US dollars") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be an amount of US dollars >= 0")
    return int(value * NANO_PER_USD)


def _run(settings: Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    async def main() -> T:
        # Imported here: SQLAlchemy takes a moment, and `agentspace chat` never needs it.
        from gateway.store import Database, Store
        from gateway.store.db import create_engine, make_sessionmaker, upgrade_to_head

        engine = create_engine(settings.db_url, pool_size=1, max_overflow=0)
        try:
            await upgrade_to_head(engine)  # as the gateway does at start; a no-op when it already ran
            return await work(Store(Database(engine, make_sessionmaker(engine)), settings.clock))
        finally:
            await engine.dispose()

    return asyncio.run(main())


def create_named(args: argparse.Namespace) -> int:
    from gateway.store.keys import new_key

    if not NAME.fullmatch(args.name):
        print("agentspace: a key name is 1-64 letters, digits, '_', '.' or '-'", file=sys.stderr)
        return 2
    key = new_key()
    settings = Settings.from_env()

    async def work(store: Store) -> None:
        await store.keys.create(args.name, key, daily_cap=args.daily_usd, monthly_cap=args.monthly_usd)

    _run(settings, work)
    # Printed once, here; only its hash is stored, so it can never be shown again.
    print(key)
    print(
        f"key {args.name!r} created; it is not stored, only its hash: keep it now. Clients send it as "
        "`Authorization: Bearer <key>` or `x-api-key`, e.g. ANTHROPIC_API_KEY for Anthropic SDK apps",
        file=sys.stderr,
    )
    return 0


def _cap(nano: int | None) -> str:
    return "-" if nano is None else format(Decimal(nano).scaleb(-9).normalize(), "f")


def list_keys(args: argparse.Namespace) -> int:
    rows = _run(Settings.from_env(), lambda store: store.keys.listed())
    if args.json:
        for row in rows:
            k = row.key
            print(
                dump(
                    {
                        "name": k.name,
                        "prefix": k.prefix,
                        "createdAt": iso(k.created_at),
                        "lastUsedAt": iso(k.last_used_at) if k.last_used_at else None,
                        "revokedAt": iso(k.revoked_at) if k.revoked_at else None,
                        "requests": row.requests,
                        "spentNanoUsd": row.spent,
                        "dailyCapNanoUsd": k.daily_cap,
                        "monthlyCapNanoUsd": k.monthly_cap,
                    }
                )
            )
        return 0
    if not rows:
        print("no named keys; make one with: agentspace token create --name NAME")
        return 0
    table = [["name", "key", "created (UTC)", "last used (UTC)", "requests", "spent USD", "daily cap", "monthly cap"]]
    for row in rows:
        k = row.key
        table.append(
            [
                k.name + (" (revoked)" if k.revoked_at else ""),
                k.prefix + "…",
                iso(k.created_at)[:19].replace("T", " "),
                iso(k.last_used_at)[:19].replace("T", " ") if k.last_used_at else "never",
                f"{row.requests:,}",
                format(Decimal(row.spent).scaleb(-9).quantize(Decimal("0.000001")), "f"),
                _cap(k.daily_cap),
                _cap(k.monthly_cap),
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for r in table:
        print("  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return 0


def revoke_key(args: argparse.Namespace) -> int:
    if not _run(Settings.from_env(), lambda store: store.keys.revoke(args.name)):
        print(f"agentspace: no active key named {args.name!r}", file=sys.stderr)
        return 1
    print(f"key {args.name!r} revoked; clients using it are refused from their next request")
    return 0


def set_budget(args: argparse.Namespace) -> int:
    daily, monthly = (None, None) if args.clear else (args.daily_usd, args.monthly_usd)
    if not args.clear and daily is None and monthly is None:
        print("agentspace: give --daily-usd and/or --monthly-usd, or --clear", file=sys.stderr)
        return 2

    async def work(store: Store) -> bool:
        return await store.keys.set_caps(args.name, daily_cap=daily, monthly_cap=monthly)

    if not _run(Settings.from_env(), work):
        print(f"agentspace: no key named {args.name!r}", file=sys.stderr)
        return 1
    print(f"key {args.name!r}: daily cap {_cap(daily)} USD, monthly cap {_cap(monthly)} USD")
    return 0
