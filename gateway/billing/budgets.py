"""Spend caps per UTC day and month, of an agent (agent.toml) and of a gateway key (docs/BUDGETS.md).

Before any upstream call, a send's worst case (its estimated prompt at the dearest rate it could be billed at, plus
`maxTokens` of output) is added to the spend so far of its agent and of its key, and to what their requests still in
flight may yet cost;
if that passes a cap, the send is refused with BUDGET_EXCEEDED. Otherwise the worst case is reserved until the
request's usage row is written, so concurrent sends cannot each squeeze under the same cap.

Spend so far and the reservations are both in SQL (store/reservations.py), checked and written in one transaction
under a lock per holder, so every process on one database sees every request in flight and together they cannot pass
a cap. A reservation is a leased row: its process renews the lease while it lives; a dead process's rows stop
counting when theirs runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any, Protocol

from gateway import errors
from gateway.clock import SYSTEM_CLOCK
from gateway.store import Held, Store
from gateway.store.models import ApiKey

from .budget_config import Budget
from .caps import CapStatus, Holder, check, key_budget, period_bounds, worst_case
from .prices import PriceBook

log = logging.getLogger(__name__)

# How long a reservation counts after its process last renewed it (a process that died stops renewing), and how
# often a live process renews: a dead process's in-flight requests stop holding budget within the lease.
RESERVATION_LEASE_S = 60.0
RESERVATION_RENEW_S = 20.0


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


class Reservation:
    """One send's worst case, held in SQL against each of its holders' caps until its usage is recorded. `ids`: its
    rows (one per holder), for the request's usage row to name. Release is idempotent and never raises: a row it
    could not delete (the database down) stops counting when its lease runs out."""

    def __init__(self, guard: BudgetGuard, holds: tuple[tuple[str, int], ...], ids: tuple[str, ...] = ()) -> None:
        self._guard = guard
        self.holds = holds
        self.ids = ids
        self._released = False

    @property
    def amount(self) -> int:
        return self.holds[0][1] if self.holds else 0

    async def release(self) -> None:
        if not self._released:
            self._released = True
            await self._guard._release(self)


class BudgetGuard:
    """Checks and holds budgets. Reservations are rows in SQL (store/reservations.py), so processes sharing one
    database cannot together pass a cap; this process renews the lease on its own rows while they are held."""

    def __init__(self, store: Store, prices: PriceBook) -> None:
        self._store = store
        self._prices = prices
        self._clock = store.clock  # the day and month a send falls in are the store's, as its usage rows' are
        self.owner = str(uuid.uuid4())  # this process, in the rows it holds
        self._live: set[str] = set()  # ids of this process's rows not yet released
        self._renewing: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[None]] = set()

    def _agent(self, agent_id: str, budget: Budget) -> Holder:
        return Holder(f"agent:{agent_id}", f"agent {agent_id}", budget, (("agentId", agent_id),), "agent", agent_id)

    def _key(self, key: ApiKey, budget: Budget) -> Holder:
        return Holder(f"key:{key.id}", f"key {key.name}", budget, (("keyName", key.name),), "key", key.id)

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
        by_ref = {holder.ref: holder for holder in holders}

        def judge(found: list[Held]) -> None:
            for held in found:
                check(by_ref[held.ref], held, worst, now)

        wall = SYSTEM_CLOCK.now()  # leases are about processes being alive: the machine's clock, never a test's
        writing = asyncio.ensure_future(
            self._store.reservations.reserve(
                [holder.spend(now) for holder in holders],
                worst,
                owner=self.owner,
                now=wall,
                expires_at=wall + timedelta(seconds=RESERVATION_LEASE_S),
                judge=judge,
            )
        )
        try:
            ids = await asyncio.shield(writing)
        except asyncio.CancelledError:
            writing.add_done_callback(self._unwanted)  # cancelled as it was written: nobody will release it
            raise
        self._live.update(ids)
        self._keep_renewing()
        return Reservation(self, tuple((holder.ref, worst) for holder in holders), tuple(ids))

    async def status(self, workspaces: AgentDirectory, agent_id: str | None = None) -> list[dict[str, Any]]:
        """Every cap (of one agent, or of every agent and key) with its spend this period and what every process
        holds in flight, for reports."""
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
            held = await self._store.reservations.held(holder.spend(now), SYSTEM_CLOCK.now())
            for (period, cap), spent in zip(holder.budget.caps, held.spent, strict=True):
                start, end = period_bounds(period, now)
                out.append(CapStatus(holder, period, start, end, cap, spent, held.in_flight).fields())
        return out

    async def _prompt_tokens(self, model: str, estimate: int) -> int:
        """The local estimate, scaled up by what Anthropic has reported for this model if it counts more."""
        row = await self._store.chats.calibration(model)
        if row is None or row.samples == 0 or row.estimated_tokens <= 0:
            return estimate
        return max(estimate, -(-estimate * row.reported_tokens // row.estimated_tokens))

    async def _release(self, reservation: Reservation) -> None:
        self._live.difference_update(reservation.ids)
        deleting = asyncio.ensure_future(self._store.reservations.release(reservation.ids))
        try:
            # Shielded: a cancel of the turn must not leave its row to the lease.
            await asyncio.shield(deleting)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the database is down: the lease runs out instead
            log.warning("could not release budget reservation %s (%s); its lease will end it", reservation.ids, exc)

    def _unwanted(self, writing: asyncio.Future[list[str]]) -> None:
        if not writing.cancelled() and writing.exception() is None:
            task = asyncio.ensure_future(self._store.reservations.release(writing.result()))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _keep_renewing(self) -> None:
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.create_task(self._renew(), name="budget-leases")

    async def _renew(self) -> None:
        """While this process holds reservations, push their lease forward; ends when it holds none."""
        while self._live:
            await asyncio.sleep(RESERVATION_RENEW_S)
            if not self._live:
                return
            try:
                await self._store.reservations.renew(
                    self.owner, SYSTEM_CLOCK.now() + timedelta(seconds=RESERVATION_LEASE_S)
                )
            except Exception as exc:
                log.warning("could not renew budget reservations (%s); retrying", exc)

    async def close(self) -> None:
        task, self._renewing = self._renewing, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


__all__ = ["AgentDirectory", "BudgetGuard", "BudgetedAgent", "Reservation", "key_budget", "period_bounds", "worst_case"]
