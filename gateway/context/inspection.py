"""Measuring an assembled request: bytes, token estimates and cost per section, the window, calibration."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.billing.accounting import nano_to_usd
from gateway.billing.prices import PriceBook
from gateway.store.models import TokenCalibration

from .assembly import Assembled, Section
from .assembly_cache import Prefix
from .context_config import ContextConfig
from .tokens import COUNTER_NAME, TokenCounter, utf8_len
from .window import effective_window

# The API wraps each request in a few tokens of its own (roles, separators); a small, honest fudge.
REQUEST_OVERHEAD_TOKENS = 3
YIELD_EVERY_S = 0.005


@dataclass(frozen=True, slots=True)
class Measured:
    section: Section
    byte_count: int
    token_estimate: int


async def section_size(section: Section, counter: TokenCounter) -> tuple[int, int]:
    """(UTF-8 bytes, estimated tokens) of the section as sent: text as is, `tools` and `history` as compact JSON."""
    content = section.content
    if not content:
        return 0, 0
    if isinstance(content, str):
        return utf8_len(content), await counter.count_async(content)
    if section.item_keys:
        return await _turns_size(content, section.item_keys, counter, section.array_bytes, section.prefix)
    tokens, size = await counter.measure_json_async(content)
    return size, tokens


async def _turns_size(
    turns: list[Any],
    keys: Sequence[Hashable | None],
    counter: TokenCounter,
    array_bytes: int | None = None,
    prefix: Prefix | None = None,
) -> tuple[int, int]:
    """Turn by turn, each under its identity, so only new or changed turns are serialized and counted; the turns a
    session kept from its earlier requests (`prefix`) as one sum, known since the request that kept them.

    Warm, that is a dictionary lookup per new turn. Cold (a long session's first request after a restart) tiktoken
    needs ~0.2 s per MB, so the loop is given back every few milliseconds and other connections' streams keep
    flowing. (A worker thread was tried: it fought the loop for the GIL and stalled it longer.)
    """
    total_bytes = len(turns) + 1 if array_bytes is None else array_bytes  # "[", "]" and the commas between turns
    total_tokens, start = 0, 0
    if prefix is not None:
        if prefix.measured is None:
            base = prefix.base
            known = base.measured if base is not None else None
            first = base.turns if base is not None and known is not None else 0
            size, tokens = await _sum_turns(turns[first : prefix.turns], keys[first : prefix.turns], counter)
            prefix.measured = (size + known[0], tokens + known[1]) if known is not None else (size, tokens)
            prefix.settle()
        total_bytes, total_tokens = total_bytes + prefix.measured[0], prefix.measured[1]
        start = prefix.turns
    size, tokens = await _sum_turns(turns[start:], keys[start:], counter)
    return total_bytes + size, total_tokens + tokens


async def _sum_turns(turns: Sequence[Any], keys: Sequence[Hashable | None], counter: TokenCounter) -> tuple[int, int]:
    total_bytes = total_tokens = 0
    deadline = time.perf_counter() + YIELD_EVERY_S
    for turn, key in zip(turns, keys, strict=True):
        known = counter.known(key)
        tokens, size = known if known is not None else await counter.measure_json_async(turn, key)
        total_bytes += size
        total_tokens += tokens
        if time.perf_counter() > deadline:
            await asyncio.sleep(0)
            deadline = time.perf_counter() + YIELD_EVERY_S
    return total_bytes, total_tokens


async def measure(assembled: Assembled, counter: TokenCounter) -> list[Measured]:
    return [Measured(s, *await section_size(s, counter)) for s in assembled.sections]


def estimate_input_tokens(measured: Sequence[Measured]) -> int:
    return sum(m.token_estimate for m in measured) + REQUEST_OVERHEAD_TOKENS


def calibration_ratio(row: TokenCalibration | None) -> float | None:
    """Reported / estimated input tokens over every request so far for the model; None until there is data."""
    if row is None or row.samples == 0 or row.estimated_tokens <= 0:
        return None
    return row.reported_tokens / row.estimated_tokens


def calibrated(estimate: int, ratio: float | None) -> int:
    return estimate if ratio is None else round(estimate * ratio)


def inspection_body(
    assembled: Assembled,
    measured: Sequence[Measured],
    prices: PriceBook,
    *,
    at: datetime,
    ratio: float | None,
    context: ContextConfig | None = None,
) -> dict[str, Any]:
    """Everything of the `context.inspection` frame that describes the request itself. `context`: the agent's
    settings (its window)."""
    best = calibrated(estimate_input_tokens(measured), ratio)
    # The tier is chosen by the size of the whole prompt, as the bill will be; the best estimate picks it.
    rate = prices.input_rate(assembled.model, at, best)
    sections: list[dict[str, Any]] = []
    total_bytes = total_tokens = 0
    total_cost: int | None = 0 if rate is not None else None
    for m in measured:
        cost = None if rate is None else m.token_estimate * rate
        entry: dict[str, Any] = {
            "name": m.section.name,
            "content": m.section.content,
            "byteCount": m.byte_count,
            "tokenEstimate": m.token_estimate,
            "costEstimate": nano_to_usd(cost),
        }
        if m.section.item_count is not None:
            entry["itemCount"] = m.section.item_count
        if m.section.truncated is not None:
            entry["truncated"] = m.section.truncated
        entry.update(m.section.details)
        sections.append(entry)
        total_bytes += m.byte_count
        total_tokens += m.token_estimate
        if total_cost is not None and cost is not None:
            total_cost += cost
    window = effective_window(prices, assembled.model, context or ContextConfig())
    return {
        "model": assembled.model,
        "sections": sections,
        "totals": {
            "byteCount": total_bytes,
            "tokenEstimate": total_tokens,
            "costEstimate": nano_to_usd(total_cost),
        },
        "tokenCounter": COUNTER_NAME,
        "requestOverheadTokens": REQUEST_OVERHEAD_TOKENS,
        "calibratedTokenEstimate": None if ratio is None else best,
        "calibrationRatio": None if ratio is None else round(ratio, 4),
        "contextWindow": window,
        "windowShare": None if not window else round(best / window, 6),
        "maxTokens": assembled.params["max_tokens"],
        "cacheMode": assembled.cache_mode,
        "priced": rate is not None,
    }


async def editing_report(
    assembled: Assembled, counter: TokenCounter, rate: int | None, context: ContextConfig
) -> dict[str, Any]:
    """The inspector's `contextEditing`: the agent's settings, what editing left out of this request and what that
    saved (the blocks as stored against what is sent instead)."""
    cleared: list[dict[str, Any]] = []
    saved_bytes = saved_tokens = 0
    for edit in assembled.edits:
        tokens, size = await counter.measure_json_async(edit.original)
        sent_tokens, sent_size = (0, -1)  # a block left out takes its comma with it
        if edit.replacement is not None:
            sent_tokens, sent_size = await counter.measure_json_async(edit.replacement)
        saved_bytes += size - sent_size
        saved_tokens += tokens - sent_tokens
        entry = {"kind": edit.kind, "messageId": edit.message_id, "byteCount": size, "tokenEstimate": tokens}
        if edit.tool_use_id is not None:
            entry.update(toolUseId=edit.tool_use_id, name=edit.name)
        cleared.append(entry)
    return {
        "clearToolResults": context.clear_tool_results,
        "keepToolUses": context.keep_tool_uses,
        "clearThinking": context.clear_thinking,
        "keepThinkingTurns": context.keep_thinking_turns,
        "clearBatch": context.clear_batch,
        "clearedToolResults": sum(1 for e in assembled.edits if e.kind == "tool_result"),
        "clearedThinking": sum(1 for e in assembled.edits if e.kind == "thinking"),
        "savedBytes": saved_bytes,
        "savedTokens": saved_tokens,
        "savedCost": None if rate is None else nano_to_usd(saved_tokens * rate),
        "cleared": cleared,
    }
