"""Spend caps per UTC day and month, of an agent (agent.toml) and of a gateway key (docs/BUDGETS.md).

Before any upstream call, a send's worst case (its estimated prompt at the dearest rate it could be billed at, plus
`maxTokens` of output) is added to the spend so far of its agent and of its key, and to what their requests still in
flight may yet cost;
if that passes a cap, the send is refused with BUDGET_EXCEEDED. Otherwise the worst case is reserved until the
request's usage row is written, so concurrent sends cannot each squeeze under the same cap.

Spend so far comes from SQL, so it is shared by every process on one database; reservations live in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from gateway import errors
from gateway.protocol import iso
from gateway.store import Store
from gateway.store.models import ApiKey

from .accounting import nano_to_usd
from .budget_config import Budget
from .prices import PriceBook


class BudgetedAgent(Protocol):
    """What a budget check needs of an agent (a context.workspace.Workspace is one). Billing sits below context, so
    it names the shape instead of importing the workspace."""

    @property
    def agent_id(self) -> str: ...

    @property
    def budget(self) -> Budget | None: ...

    @property
    def cache_mode(self) -> str: ...


class AgentDirectory(Protocol):
    """Where the agents and their budgets are found (a context.workspace.WorkspaceLoader is one)."""

    def list_agents(self) -> list[str]: ...

    def load(self, agent_id: str) -> BudgetedAgent: ...


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


class Reservation:
    """One send's worst case, held against each of its holders' caps until its usage is recorded. Release is
    idempotent."""

    def __init__(self, guard: BudgetGuard, holds: tuple[tuple[str, int], ...]) -> None:
        self._guard = guard
        self.holds = holds
        self._released = False

    @property
    def amount(self) -> int:
        return self.holds[0][1] if self.holds else 0

    def release(self) -> None:
        if not self._released:
            self._released = True
            for ref, amount in self.holds:
                self._guard._release(ref, amount)


@dataclass(frozen=True, slots=True)
class Holder:
    """Whose caps a request counts against: its agent (agent.toml `[budget]`) or its gateway key (api_keys)."""

    ref: str  # "agent:<id>" or "key:<id>": where reservations and locks are kept
    label: str  # for messages: "agent writer", "key ci-bot"
    budget: Budget
    ids: tuple[tuple[str, Any], ...]  # what error frames and reports name it by: agentId or keyName
    spent_since: Callable[[datetime], Awaitable[int]]


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


class BudgetGuard:
    def __init__(self, store: Store, prices: PriceBook) -> None:
        self._store = store
        self._prices = prices
        self._clock = store.clock  # the day and month a send falls in are the store's, as its usage rows' are
        self._reserved: dict[str, int] = {}
        # Bumped on every release: a spend read that overlapped a release may have missed that request's row.
        self._settled: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def _agent(self, agent_id: str, budget: Budget) -> Holder:
        spent = functools.partial(self._store.usage.spent_since, agent_id)
        return Holder(f"agent:{agent_id}", f"agent {agent_id}", budget, (("agentId", agent_id),), spent)

    def _key(self, key: ApiKey, budget: Budget) -> Holder:
        spent = functools.partial(self._store.keys.spent_since, key.id)
        return Holder(f"key:{key.id}", f"key {key.name}", budget, (("keyName", key.name),), spent)

    async def reserve(
        self,
        workspace: BudgetedAgent,
        model: str,
        estimate: int,
        max_tokens: int,
        now: datetime | None = None,
        *,
        key: ApiKey | None = None,
        cache_mode: str | None = None,
    ) -> Reservation | None:
        """Raise BudgetExceeded, or hold this send's worst case against its agent's caps and its key's; None when
        neither has a budget. `cache_mode`: the request's own (HTTP), else the agent's."""
        budget, agent_id = workspace.budget, workspace.agent_id
        if budget is not None and budget.problem:
            raise errors.BudgetExceeded(
                f"agent {agent_id}'s budget is misconfigured ({budget.problem}); fix agent.toml to send again",
                agentId=agent_id,
            )
        holders = [self._agent(agent_id, budget)] if budget is not None else []
        capped = key_budget(key) if key is not None else None
        if key is not None and capped is not None:
            holders.append(self._key(key, capped))
        if not holders:
            return None
        now = now or self._clock.now()
        prompt = await self._prompt_tokens(model, estimate)
        worst = worst_case(self._prices, model, cache_mode or workspace.cache_mode, prompt, max_tokens, now)
        if worst is None:
            raise errors.BudgetExceeded(
                f"model {model} has no known price, so {holders[0].label}'s budget cannot be enforced;"
                " add its price to prices.toml",
                **dict(holders[0].ids),
                model=model,
            )
        async with contextlib.AsyncExitStack() as locks:
            for holder in sorted(holders, key=lambda h: h.ref):  # one order everywhere: no deadlock
                await locks.enter_async_context(self._locks.setdefault(holder.ref, asyncio.Lock()))
            for holder in holders:
                await self._check(holder, worst, now)
            for holder in holders:
                self._reserved[holder.ref] = self._reserved.get(holder.ref, 0) + worst
        return Reservation(self, tuple((holder.ref, worst) for holder in holders))

    async def _check(self, holder: Holder, worst: int, now: datetime) -> None:
        spent = await self._spent(holder, now)
        in_flight = self._reserved.get(holder.ref, 0)
        for period, cap in holder.budget.caps:
            if spent[period] + in_flight + worst > cap:
                end = period_bounds(period, now)[1]
                raise errors.BudgetExceeded(
                    f"{holder.label}'s {_PERIOD_WORD[period]} budget of ${_dollars(cap)} would be passed:"
                    f" ${_dollars(spent[period])} spent, ${_dollars(in_flight)} in flight, and this request"
                    f" could cost up to ${_dollars(worst)}",
                    **dict(holder.ids),
                    period=period,
                    capUsd=nano_to_usd(cap),
                    spentUsd=nano_to_usd(spent[period]),
                    inFlightUsd=nano_to_usd(in_flight),
                    requestWorstCaseUsd=nano_to_usd(worst),
                    resetsAt=iso(end),
                )

    async def status(self, workspaces: AgentDirectory, agent_id: str | None = None) -> list[dict[str, Any]]:
        """Every cap (of one agent, or of every agent and key) with its spend this period, for reports."""
        now = self._clock.now()
        holders: list[Holder] = []
        out: list[dict[str, Any]] = []
        for agent in [agent_id] if agent_id is not None else workspaces.list_agents():
            try:
                budget = workspaces.load(agent).budget
            except errors.GatewayError:
                continue  # an unknown agent in a report filter simply has no caps
            if budget is not None and budget.problem:
                out.append({"agentId": agent, "problem": budget.problem})
            elif budget is not None:
                holders.append(self._agent(agent, budget))
        if agent_id is None:
            holders += [
                self._key(key, budget) for key in await self._store.keys.capped() if (budget := key_budget(key))
            ]
        for holder in holders:
            spent = await self._spent(holder, now, settle=False)
            in_flight = self._reserved.get(holder.ref, 0)
            for period, cap in holder.budget.caps:
                start, end = period_bounds(period, now)
                out.append(CapStatus(holder, period, start, end, cap, spent[period], in_flight).fields())
        return out

    async def _spent(self, holder: Holder, now: datetime, *, settle: bool = True) -> dict[str, int]:
        while True:
            settled = self._settled.get(holder.ref, 0)
            spent = {
                period: await holder.spent_since(period_bounds(period, now)[0]) for period, _cap in holder.budget.caps
            }
            # A request that settled while we read may be missing from the sums and already gone from the
            # reservations; read again rather than undercount. The caller holds the holder's lock, so no new
            # reservation can start meanwhile and this ends. Reports (settle=False) show one consistent-enough read.
            if not settle or self._settled.get(holder.ref, 0) == settled:
                return spent

    async def _prompt_tokens(self, model: str, estimate: int) -> int:
        """The local estimate, scaled up by what Anthropic has reported for this model if it counts more."""
        row = await self._store.chats.calibration(model)
        if row is None or row.samples == 0 or row.estimated_tokens <= 0:
            return estimate
        return max(estimate, -(-estimate * row.reported_tokens // row.estimated_tokens))

    def _release(self, ref: str, amount: int) -> None:
        left = self._reserved.get(ref, 0) - amount
        if left > 0:
            self._reserved[ref] = left
        else:
            self._reserved.pop(ref, None)
        self._settled[ref] = self._settled.get(ref, 0) + 1


_PERIOD_WORD = {"day": "daily", "month": "monthly"}


def _dollars(nano: int) -> str:
    """Exact and short for messages: 5000000000 -> "5", 82100000 -> "0.0821"."""
    return format(Decimal(nano).scaleb(-9).normalize(), "f")
