"""An agent's spend caps as written in its agent.toml `[budget]` table (documented in docs/BUDGETS.md).

A budget is a safety control, so a broken one fails closed: an unreadable `[budget]` (a typo in a key, a negative or
non-numeric cap) becomes a budget with a `problem`, and that agent's sends are refused until it is fixed, rather
than silently running without a cap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

PERIODS = {"daily_usd": "day", "monthly_usd": "month"}
NANO_PER_USD = 1_000_000_000
# [ \t], not \s: \s also matches newlines, and a file of 64 KiB of blank lines then took seconds (quadratic).
_BUDGET_TABLE = re.compile(r"^[ \t]*\[[ \t]*budget[ \t]*\]", re.MULTILINE)
# A cap beyond this is a typo, and beyond 1e308 it would not even fit the float a report shows it as.
MAX_CAP_USD = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Budget:
    caps: tuple[tuple[str, int], ...] = ()  # (period "day" | "month", cap in nano-USD)
    problem: str | None = None


def parse_budget(raw: Any) -> Budget | None:
    """The `[budget]` table's value (None when absent) -> a Budget; never raises."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        return Budget(problem="[budget] must be a table with daily_usd and/or monthly_usd")
    unknown = sorted(set(raw) - set(PERIODS))
    if unknown:
        return Budget(problem=f"[budget]: unknown key(s) {', '.join(unknown)}; allowed: daily_usd, monthly_usd")
    caps: list[tuple[str, int]] = []
    for key, period in PERIODS.items():
        if key not in raw:
            continue
        value = raw[key]
        nano = _usd_to_nano(value)
        if nano is None:
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
            rule = f"must be a number of US dollars from 0 to {MAX_CAP_USD}"
            return Budget(problem=f"[budget]: {key} {rule}, got {shown}")
        caps.append((period, nano))
    return Budget(tuple(caps)) if caps else None


def budget_of_unreadable(text: str) -> Budget | None:
    """agent.toml that is not valid TOML is ignored; if it meant to set a budget, the agent must not run uncapped."""
    if _BUDGET_TABLE.search(text):
        return Budget(problem="agent.toml is not valid TOML, so its [budget] cannot be read")
    return None


def _usd_to_nano(value: Any) -> int | None:
    # bool is an int subclass: `daily_usd = true` is a mistake, not $1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        # str() first: TOML's 0.1 is the float nearest 0.1, and the user meant exactly 10 cents.
        nano = Decimal(str(value)) * NANO_PER_USD
    except InvalidOperation:
        return None
    if not nano.is_finite() or nano < 0 or nano > MAX_CAP_USD * NANO_PER_USD:
        return None
    return int(nano)  # below a nano-dollar rounds down: the cap is never raised by rounding
