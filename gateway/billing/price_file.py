"""The prices file's format (docs/PRICING.md): its entries, periods and tiers, and the parser that validates a file
into them. Every problem is a ValueError naming the file and the place in it, so a typo never prices silently."""

from __future__ import annotations

import itertools
import tomllib
from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from .accounting import Rates

RATE_FIELDS = ("input", "output", "cache_write_5m", "cache_write_1h", "cache_read")
_MODEL_KEYS = {"id", "aliases", "context_window", "deprecated", "retired", "notes", "periods"}
_PERIOD_KEYS = {"effective_from", "tiers", *RATE_FIELDS}
_TIER_KEYS = {"above_prompt_tokens", *RATE_FIELDS}


@dataclass(frozen=True)
class PriceTier:
    above_prompt_tokens: int  # applies when the whole prompt is strictly above this
    rates: Rates

    @property
    def label(self) -> str:
        return f"prompt>{self.above_prompt_tokens}"


@dataclass(frozen=True)
class PricePeriod:
    effective_from: date
    rates: Rates
    tiers: tuple[PriceTier, ...] = ()  # ascending by threshold

    def select(self, prompt_tokens: int) -> tuple[Rates, str | None]:
        chosen: tuple[Rates, str | None] = (self.rates, None)
        for tier in self.tiers:
            if prompt_tokens > tier.above_prompt_tokens:
                chosen = (tier.rates, tier.label)
        return chosen


@dataclass(frozen=True)
class PriceEntry:
    id: str
    aliases: tuple[str, ...]
    context_window: int | None
    source: str
    periods: tuple[PricePeriod, ...]  # ascending by effective_from
    deprecated: str | None = None
    retired: str | None = None
    notes: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.id, *self.aliases)

    def period_at(self, day: date) -> PricePeriod | None:
        current = None
        for period in self.periods:
            if period.effective_from <= day:
                current = period
        return current


def parse_prices(text: str, file: str, *, source: str) -> list[PriceEntry]:
    """Parse and validate one prices file; any problem is a ValueError that names the file and where in it."""
    try:
        # Decimal, not float: 0.1 must stay exactly 0.1 so the resolution check below means something.
        data = tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{file}: not valid TOML: {exc}") from exc
    _no_unknown(data, {"version", "checked", "models", "server_tools"}, file)  # server_tools.py reads its own
    version, checked = data.get("version"), data.get("checked")
    models: Any = data.get("models", [])  # a file of comments only is a harmless empty override
    _require(version is None or isinstance(version, str), f"{file}: 'version' must be a string")
    _require(checked is None or isinstance(checked, date), f"{file}: 'checked' must be a date like 2026-11-25")
    _require(isinstance(models, list), f"{file}: expected a [[models]] list")
    if source == "builtin":
        source = f"builtin {version}" if version else "builtin"
    entries = [_parse_entry(m, file, i, source) for i, m in enumerate(models)]
    seen: dict[str, str] = {}
    for e in entries:
        for name in e.names:
            if name in seen:
                raise ValueError(f"{file}: model name {name!r} is used by both {seen[name]!r} and {e.id!r}")
            seen[name] = e.id
    return entries


def _parse_entry(raw: Any, file: str, index: int, source: str) -> PriceEntry:
    _require(isinstance(raw, dict), f"{file}: models[{index}]: expected a table")
    model_id = raw.get("id")
    _require(isinstance(model_id, str) and model_id != "", f"{file}: models[{index}]: 'id' must be a non-empty string")
    where = f"{file}: model {model_id!r}"
    _no_unknown(raw, _MODEL_KEYS, where)
    aliases = raw.get("aliases", [])
    ok = isinstance(aliases, list) and all(isinstance(a, str) and a for a in aliases)
    _require(ok, f"{where}: 'aliases' must be a list of strings")
    window = raw.get("context_window")
    _require(window is None or _is_int(window, 1), f"{where}: 'context_window' must be a positive integer")
    notes = {k: raw.get(k) for k in ("deprecated", "retired", "notes")}
    for key, value in notes.items():
        _require(value is None or isinstance(value, str), f"{where}: {key!r} must be a string")
    periods_raw = raw.get("periods")
    ok = isinstance(periods_raw, list) and len(periods_raw) > 0
    _require(ok, f"{where}: needs at least one [[models.periods]] entry")
    periods = [_parse_period(p, f"{where}: periods[{i}]") for i, p in enumerate(periods_raw)]
    periods.sort(key=lambda p: p.effective_from)
    for a, b in itertools.pairwise(periods):
        _require(a.effective_from != b.effective_from, f"{where}: two periods start on {a.effective_from}")
    return PriceEntry(
        model_id, tuple(aliases), window, source, tuple(periods), notes["deprecated"], notes["retired"], notes["notes"]
    )


def _parse_period(raw: Any, where: str) -> PricePeriod:
    _require(isinstance(raw, dict), f"{where}: expected a table")
    _no_unknown(raw, _PERIOD_KEYS, where)
    start = raw.get("effective_from")
    # tomllib gives datetime (a date subclass) for a date-time; a period starts on a whole UTC day.
    ok = isinstance(start, date) and not isinstance(start, datetime)
    _require(ok, f"{where}: 'effective_from' must be a date like 2026-10-07")
    tiers_raw = raw.get("tiers", [])
    _require(isinstance(tiers_raw, list), f"{where}: 'tiers' must be a list")
    tiers: list[PriceTier] = []
    for i, t in enumerate(tiers_raw):
        tw = f"{where}: tiers[{i}]"
        _require(isinstance(t, dict), f"{tw}: expected a table")
        _no_unknown(t, _TIER_KEYS, tw)
        limit = t.get("above_prompt_tokens")
        _require(_is_int(limit, 0), f"{tw}: 'above_prompt_tokens' must be a non-negative integer")
        tiers.append(PriceTier(limit, _parse_rates(t, tw)))
    tiers.sort(key=lambda t: t.above_prompt_tokens)
    ok = len({t.above_prompt_tokens for t in tiers}) == len(tiers)
    _require(ok, f"{where}: two tiers share one 'above_prompt_tokens'")
    return PricePeriod(start, _parse_rates(raw, where), tuple(tiers))


def _parse_rates(raw: dict[str, Any], where: str) -> Rates:
    nano: dict[str, int] = {}
    for name in RATE_FIELDS:
        value: Any = raw.get(name)
        _require(value is not None, f"{where}: missing {name!r} (USD per million tokens)")
        ok = _is_int(value, 0) or (isinstance(value, Decimal) and value.is_finite() and value >= 0)
        _require(ok, f"{where}: {name!r} must be a non-negative number of USD per million tokens, got {value!r}")
        scaled = Decimal(value) * 1000  # USD/MTok -> nano-USD/token
        if scaled != scaled.to_integral_value():
            raise ValueError(
                f"{where}: {name!r} = {value} USD/MTok is finer than 1 nano-USD per token; use at most 3 decimals"
            )
        nano[name] = int(scaled)
    return Rates(**nano)


def _no_unknown(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    # A misspelt key (say "cache_reed") must fail loudly, not leave a price silently at its old value.
    unknown = sorted(set(raw) - allowed)
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise ValueError(f"{where}: unknown key(s) {names}; allowed: {', '.join(sorted(allowed))}")


def apply_overrides(builtin: list[PriceEntry], overrides: list[PriceEntry]) -> list[PriceEntry]:
    """A user entry replaces every built-in entry one of its names matches and takes over that entry's names too,
    so overriding "claude-haiku-4-5" also covers "claude-haiku-4-5-20251001"."""
    by_name = {name: e for e in builtin for name in e.names}
    user_names = {name for e in overrides for name in e.names}
    replacing: dict[str, PriceEntry] = {}  # built-in id -> the user entry that replaces it
    added: list[PriceEntry] = []
    for entry in overrides:
        hits = {by_name[n].id: by_name[n] for n in entry.names if n in by_name}
        inherited = dict.fromkeys(n for hit in hits.values() for n in hit.names if n not in user_names)
        full = replace(entry, aliases=(*entry.aliases, *inherited))
        replacing.update(dict.fromkeys(hits, full))
        if not hits:
            added.append(full)
    # Keep the built-in order so `agentspace prices` stays stable; user-only models go last.
    result: list[PriceEntry] = []
    for e in builtin:
        chosen = replacing.get(e.id, e)
        if chosen not in result:
            result.append(chosen)
    return result + added


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _is_int(value: object, minimum: int) -> bool:
    # bool is an int subclass; `true` must not pass as a token count.
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
