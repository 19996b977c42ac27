"""Prices of Anthropic's server-side tools, as data with effective dates like the token prices (prices.toml's
`[[server_tools]]`, docs/PRICING.md): web search is billed per search on top of its tokens; web fetch costs only the
tokens it brings. A request's counts come from `usage.server_tool_use` (`web_search_requests`, ...)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

# The server tools the API counts, by their usage field.
COUNTED = {"web_search": "web_search_requests", "web_fetch": "web_fetch_requests"}


@dataclass(frozen=True, slots=True)
class ServerToolPrice:
    name: str  # web_search | web_fetch
    periods: tuple[tuple[date, int], ...]  # (effective_from, nano-USD per request), ascending

    def at(self, day: date) -> int | None:
        found = None
        for start, nano in self.periods:
            if start <= day:
                found = nano
        return found


def parse_server_tools(text: str, file: str) -> dict[str, ServerToolPrice]:
    """The file's `[[server_tools]]` entries; a ValueError that names the file for any problem."""
    try:
        raw: Any = tomllib.loads(text, parse_float=Decimal).get("server_tools", [])
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{file}: not valid TOML: {exc}") from exc
    if not isinstance(raw, list):
        raise ValueError(f"{file}: expected a [[server_tools]] list")
    prices: dict[str, ServerToolPrice] = {}
    for i, entry in enumerate(raw):
        where = f"{file}: server_tools[{i}]"
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in COUNTED:
            raise ValueError(f"{where}: 'name' must be one of {', '.join(COUNTED)}")
        if set(entry) - {"name", "periods"}:
            raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(set(entry) - {'name', 'periods'}))}")
        periods = [_period(p, f"{where}: periods[{j}]") for j, p in enumerate(entry.get("periods") or [])]
        if not periods:
            raise ValueError(f"{where}: needs at least one [[server_tools.periods]] entry")
        prices[name] = ServerToolPrice(name, tuple(sorted(periods)))
    return prices


def _period(raw: Any, where: str) -> tuple[date, int]:
    if not isinstance(raw, dict) or set(raw) != {"effective_from", "usd_per_1000"}:
        raise ValueError(f"{where}: expected effective_from and usd_per_1000")
    start, price = raw["effective_from"], raw["usd_per_1000"]
    if not isinstance(start, date) or isinstance(start, datetime):
        raise ValueError(f"{where}: 'effective_from' must be a date like 2026-10-07")
    if isinstance(price, bool) or not isinstance(price, int | Decimal) or not Decimal(price).is_finite() or price < 0:
        raise ValueError(f"{where}: 'usd_per_1000' must be a non-negative number")
    nano = Decimal(price) * 1_000_000  # USD per 1,000 requests -> nano-USD per request
    if nano != nano.to_integral_value():
        raise ValueError(f"{where}: 'usd_per_1000' must be a whole number of nano-USD per request")
    return start, int(nano)


def server_tool_cost(prices: dict[str, ServerToolPrice], counts: dict[str, int], day: date) -> int:
    """Nano-USD for one request's server tool use; a tool without a price costs nothing extra."""
    total = 0
    for name, field in COUNTED.items():
        count = counts.get(field, 0)
        price = prices.get(name)
        rate = price.at(day) if price is not None else None
        if count and rate:
            total += count * rate
    return total
