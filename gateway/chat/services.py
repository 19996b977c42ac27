"""The long-lived pieces one gateway process shares between connections, built once in the app's cleanup_ctx."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.billing.budgets import BudgetGuard
from gateway.billing.prices import PriceBook
from gateway.clock import Clock
from gateway.context.assembly_cache import TurnCache
from gateway.context.tokens import TokenCounter
from gateway.context.workspace import WorkspaceLoader
from gateway.settings import Settings
from gateway.store import Store
from gateway.tools.registry import ToolRegistry

from .held import HeldReplies
from .key_vault import KeyProvider, Vault
from .locks import SessionLocks
from .metrics import Metrics
from .upstream import Upstream


@dataclass
class Services:
    settings: Settings
    store: Store
    upstream: Upstream
    prices: PriceBook
    workspaces: WorkspaceLoader
    tokens: TokenCounter
    locks: SessionLocks
    budgets: BudgetGuard
    tools: ToolRegistry
    metrics: Metrics = field(default_factory=Metrics)
    active_turns: set[object] = field(default_factory=set)
    held: HeldReplies = field(default_factory=HeldReplies)  # replies waiting for the database to come back
    # Turns running in this process, by session (typed loosely: chat.turn imports this module).
    live_turns: dict[str, Any] = field(default_factory=dict)
    # Sessions' history turns kept between their requests: a turn assembles and encodes only what is new.
    assembly: TurnCache = field(default_factory=TurnCache)

    @property
    def clock(self) -> Clock:
        """What "now" is: for prices, budget periods and every stored timestamp (gateway/clock.py)."""
        return self.settings.clock

    @classmethod
    def build(cls, settings: Settings, store: Store, locks: SessionLocks, metrics: Metrics | None = None) -> Services:
        """The same pieces for the server and for CLI commands that read through them (`agentspace context`)."""
        prices = PriceBook.load(settings.prices_path)
        return cls(
            settings=settings,
            store=store,
            upstream=Upstream(settings, KeyProvider(settings.anthropic_api_key, Vault(settings.vault_path))),
            prices=prices,
            workspaces=WorkspaceLoader(settings.agents_dir),
            tokens=TokenCounter(),
            locks=locks,
            budgets=BudgetGuard(store, prices),
            tools=ToolRegistry(settings),
            metrics=metrics or Metrics(),
        )
