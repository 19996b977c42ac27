"""The price book: Claude rates as data (gateway/billing/data/prices.toml plus an optional user file), priced by date.

Prices change in place, so every entry is a list of dated periods and a request is priced with the period in force on
its UTC date. The TOML format is documented in docs/PRICING.md.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path

from .accounting import Priced, Rates, TokenUsage, compute_cost
from .price_file import RATE_FIELDS, PriceEntry, apply_overrides, parse_prices
from .server_tools import ServerToolPrice, parse_server_tools, server_tool_cost


class PriceBook:
    def __init__(self, entries: list[PriceEntry], server_tools: dict[str, ServerToolPrice] | None = None) -> None:
        self._entries = list(entries)
        self._by_name = {name: e for e in self._entries for name in e.names}
        self._server_tools = server_tools or {}

    @classmethod
    def load(cls, user_file: Path | None = None) -> PriceBook:
        """Built-in prices, then the user's file on top (a missing user file is not an error)."""
        builtin = resources.files("gateway.billing").joinpath("data", "prices.toml").read_text(encoding="utf-8")
        entries = parse_prices(builtin, "gateway/billing/data/prices.toml", source="builtin")
        server_tools = parse_server_tools(builtin, "gateway/billing/data/prices.toml")
        if user_file is not None and user_file.is_file():
            text = user_file.read_text(encoding="utf-8")
            entries = apply_overrides(entries, parse_prices(text, str(user_file), source=str(user_file)))
            server_tools.update(parse_server_tools(text, str(user_file)))  # a user's entry replaces ours by name
        return cls(entries, server_tools)

    @property
    def entries(self) -> tuple[PriceEntry, ...]:
        return tuple(self._entries)

    def resolve(self, model: str) -> PriceEntry | None:
        # Exact names only: guessing from a dated id we have never seen could price a different model silently.
        return self._by_name.get(model)

    def rates(self, model: str, at: datetime, prompt_tokens: int = 0) -> tuple[Rates, str | None] | None:
        entry = self.resolve(model)
        period = entry.period_at(_utc_date(at)) if entry else None
        return period.select(prompt_tokens) if period else None

    def price(self, model: str, usage: TokenUsage, at: datetime, server_tools: dict[str, int] | None = None) -> Priced:
        """`server_tools`: the request's usage.server_tool_use counts (web searches are priced per search)."""
        found = self.rates(model, at, usage.prompt_tokens)
        entry = self.resolve(model)
        if found is None or entry is None:
            return Priced(model=model, usage=usage, rates=None, cost=None, source=None, tier=None)
        rates, tier = found
        extra = server_tool_cost(self._server_tools, server_tools or {}, _utc_date(at))
        return Priced(model, usage, rates, compute_cost(usage, rates, extra), entry.source, tier)

    def input_rate(self, model: str, at: datetime, prompt_tokens: int = 0) -> int | None:
        """Nano-USD per input token for a prompt of this size (a tier above a threshold prices every token)."""
        found = self.rates(model, at, prompt_tokens)
        return found[0].input if found else None

    def context_window(self, model: str) -> int | None:
        entry = self.resolve(model)
        return entry.context_window if entry else None

    def table(self, at: datetime) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for e in self._entries:
            period = e.period_at(_utc_date(at))
            rates = period.rates if period else None
            rows.append(
                {
                    "model": e.id,
                    "aliases": list(e.aliases),
                    **{f: mtok_str(getattr(rates, f)) if rates else "n/a" for f in RATE_FIELDS},
                    "effective_from": period.effective_from.isoformat() if period else None,
                    "tiers": [
                        {"tier": t.label, **{f: mtok_str(getattr(t.rates, f)) for f in RATE_FIELDS}}
                        for t in (period.tiers if period else ())
                    ],
                    "source": e.source,
                    "context_window": e.context_window,
                    "notes": "; ".join(n for n in (e.retired, e.deprecated, e.notes) if n),
                }
            )
        return rows


def format_price_table(rows: list[dict[str, object]]) -> str:
    """Plain aligned text; rates in USD per million tokens, tiers on indented lines under their model."""
    header = ["model", "input", "output", "write 5m", "write 1h", "read", "since", "context", "aliases / notes"]
    lines: list[list[str]] = [header]
    for row in rows:
        aliases = ", ".join(str(a) for a in _as_list(row.get("aliases")))
        extra = " | ".join(x for x in (aliases, str(row.get("notes") or "")) if x)
        window = row.get("context_window")
        lines.append(
            [
                str(row["model"]),
                *(str(row[f]) for f in RATE_FIELDS),
                str(row.get("effective_from") or "-"),
                f"{window:,}" if isinstance(window, int) else "-",
                extra,
            ]
        )
        for tier in _as_list(row.get("tiers")):
            if isinstance(tier, dict):
                lines.append([f"  {tier['tier']}", *(str(tier[f]) for f in RATE_FIELDS), "", "", ""])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = range(1, 8)  # right-align money and sizes so decimal points line up
    out = [
        "  ".join(c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(line)).rstrip()
        for line in lines
    ]
    sources = sorted({str(row.get("source")) for row in rows})
    out.append(f"USD per million tokens; source: {', '.join(sources)}")
    return "\n".join(out)


def mtok_str(nano_per_token: int) -> str:
    """Nano-USD per token as USD per million tokens: 2500 -> "2.50", 125 -> "0.125"."""
    places = Decimal("0.01") if nano_per_token % 10 == 0 else Decimal("0.001")
    return format(Decimal(nano_per_token).scaleb(-3).quantize(places), "f")


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, list | tuple) else []


def _utc_date(at: datetime) -> date:
    if at.tzinfo is None:  # naive means UTC by the gateway's convention
        return at.date()
    return at.astimezone(UTC).date()
