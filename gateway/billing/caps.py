"""The pieces of a budget check that need no database: the periods, a send's worst case, whose caps it counts
against, the refusal, and a cap's line in a report (docs/BUDGETS.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from gateway import errors
from gateway.protocol import iso
from gateway.store import Held, HolderSpend
from gateway.store.models import ApiKey

from .accounting import nano_to_usd
from .budget_config import Budget
from .prices import PriceBook


def period_bounds(period: str, now: datetime) -> tuple[datetime, datetime]:
    """The UTC day or calendar month holding `now`: [start, end)."""
    now = now.astimezone(UTC)
    if period == "day":
        start = datetime(now.year, now.month, now.day, tzinfo=UTC)
        return start, start + timedelta(days=1)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def worst_case(
    prices: PriceBook, model: str, cache_mode: str, prompt_tokens: int, max_tokens: int, at: datetime
) -> int | None:
    """The most this request could cost, nano-USD; None when the model has no known price."""
    found = prices.rates(model, at, prompt_tokens)
    if found is None:
        return None
    rates, _tier = found
    # With caching on, any prompt token may be billed as a cache write, which costs more than plain input.
    write = {"5m": rates.cache_write_5m, "1h": rates.cache_write_1h}.get(cache_mode, 0)
    return prompt_tokens * max(rates.input, write) + max_tokens * rates.output


@dataclass(frozen=True, slots=True)
class Holder:
    """Whose caps a request counts against: its agent (agent.toml `[budget]`) or its gateway key (api_keys)."""

    ref: str  # "agent:<id>" or "key:<id>": where reservations and locks are kept
    label: str  # for messages: "agent writer", "key ci-bot"
    budget: Budget
    ids: tuple[tuple[str, Any], ...]  # what error frames and reports name it by: agentId or keyName
    kind: str  # "agent" | "key"
    target: str  # the agent's id or the key's

    def spend(self, now: datetime) -> HolderSpend:
        """What to sum in SQL: its spend since the start of each capped period."""
        starts = tuple(period_bounds(period, now)[0] for period, _cap in self.budget.caps)
        return HolderSpend(self.ref, self.kind, self.target, starts)


def key_budget(key: ApiKey) -> Budget | None:
    caps = tuple(
        (period, cap) for period, cap in (("day", key.daily_cap), ("month", key.monthly_cap)) if cap is not None
    )
    return Budget(caps) if caps else None


@dataclass(frozen=True, slots=True)
class CapStatus:
    holder: Holder
    period: str
    start: datetime
    end: datetime
    cap: int
    spent: int
    in_flight: int

    def fields(self) -> dict[str, Any]:
        return {
            **dict(self.holder.ids),
            "period": self.period,
            "periodStart": iso(self.start),
            "resetsAt": iso(self.end),
            "capUsd": nano_to_usd(self.cap),
            "spentUsd": nano_to_usd(self.spent),
            "inFlightUsd": nano_to_usd(self.in_flight),
            "remainingUsd": nano_to_usd(max(0, self.cap - self.spent - self.in_flight)),
            "capNanoUsd": self.cap,
            "spentNanoUsd": self.spent,
        }


def check(holder: Holder, held: Held, worst: int, now: datetime) -> None:
    in_flight = held.in_flight
    for (period, cap), spent in zip(holder.budget.caps, held.spent, strict=True):
        if spent + in_flight + worst > cap:
            end = period_bounds(period, now)[1]
            raise errors.BudgetExceeded(
                f"{holder.label}'s {_PERIOD_WORD[period]} budget of ${_dollars(cap)} would be passed:"
                f" ${_dollars(spent)} spent, ${_dollars(in_flight)} in flight, and this request"
                f" could cost up to ${_dollars(worst)}",
                **dict(holder.ids),
                period=period,
                capUsd=nano_to_usd(cap),
                spentUsd=nano_to_usd(spent),
                inFlightUsd=nano_to_usd(in_flight),
                requestWorstCaseUsd=nano_to_usd(worst),
                resetsAt=iso(end),
            )


_PERIOD_WORD = {"day": "daily", "month": "monthly"}


def _dollars(nano: int) -> str:
    """Exact and short for messages: 5000000000 -> "5", 82100000 -> "0.0821"."""
    return format(Decimal(nano).scaleb(-9).normalize(), "f")
