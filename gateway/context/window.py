"""How much a request may hold: the window an agent works in, when its sessions are due for compaction, and what
the refusal says when a request will not fit (docs/COMPACTION.md)."""

from __future__ import annotations

from datetime import datetime

from gateway.billing.accounting import usd_str
from gateway.billing.prices import PriceBook

from .context_config import ContextConfig


def effective_window(prices: PriceBook, model: str, config: ContextConfig) -> int | None:
    """The model's window, or the agent's `[context] window` when that is smaller (or the model's is unknown)."""
    window = prices.context_window(model)
    if config.window is None:
        return window
    return config.window if window is None else min(window, config.window)


def compaction_due(prices: PriceBook, model: str, config: ContextConfig, expected: int, at: datetime) -> str | None:
    """Why a request of `expected` prompt tokens should be preceded by a compaction, or None: it passes the share of
    the window, the token threshold or the cost threshold the agent set."""
    window = effective_window(prices, model, config)
    size = f"the request would be about {expected:,} tokens"
    if window is not None and expected > config.compact_at * window:
        return f"{size}, over {config.compact_at:.0%} of the {window:,}-token window"
    if config.compact_at_tokens is not None and expected > config.compact_at_tokens:
        return f"{size}, over the agent's compact_at_tokens ({config.compact_at_tokens:,})"
    if config.compact_at_nano_usd is not None:
        rate = prices.input_rate(model, at, expected)
        if rate is not None and expected * rate > config.compact_at_nano_usd:
            return (
                f"the request's input would cost about ${usd_str(expected * rate)}, over the agent's compact_at_usd"
                f" (${usd_str(config.compact_at_nano_usd)})"
            )
    return None


def too_large_message(model: str, expected: int, window: int, *, auto: bool) -> str:
    """CONTEXT_TOO_LARGE's words: how much is over, and what to do about it."""
    over = expected - window
    text = f"the assembled context is about {expected:,} tokens; {model}'s window here is {window:,} ({over:,} over)."
    if auto:
        return text + " Compaction could not bring it under: the newest turn alone is too large; shorten it."
    return text + (
        " Compact the session (session.compact, or /compact in agentspace chat) or turn automatic compaction on"
        " (auto_compact = true under [context] in agent.toml)."
    )
