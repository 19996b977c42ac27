"""`agentspace prices`: the prices in force now (or at --at) and where each came from."""

from __future__ import annotations

import argparse
from typing import Any

from gateway.billing.prices import PriceBook, format_price_table
from gateway.protocol import parse_time
from gateway.settings import Settings


def register(sub: Any) -> None:
    parser = sub.add_parser("prices", help="list model prices in force and their source")
    parser.add_argument("--at", help="show the prices in force at this ISO date instead of now")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    book = PriceBook.load(settings.prices_path)
    at = parse_time(args.at, "at") if args.at else settings.clock.now()
    assert at is not None
    print(format_price_table(book.table(at)))
    return 0
