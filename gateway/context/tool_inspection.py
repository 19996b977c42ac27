"""What the inspector shows of tools: each tool definition actually sent (bytes, tokens and cost), the calls and
results inside the history, and a warning when tool results take most of the context (a common way for an agent's
sessions to grow expensive without anyone noticing)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .tokens import TokenCounter

# Results above this share of the request's estimated tokens draw a warning (and only when they are sizeable).
DOMINANT_SHARE = 0.5
MIN_WARN_TOKENS = 2000


async def tool_details(frame: dict[str, Any], counter: TokenCounter, executors: Mapping[str, tuple[str, str]]) -> None:
    """Add to a `context.inspection` frame: the tools section's `items`, the history section's `toolCalls` and
    `toolResults`, and `warnings`. `executors`: tool name -> (executor, policy)."""
    sections = {s["name"]: s for s in frame["sections"]}
    tools, history = sections["tools"], sections["history"]
    rate = _cost_per_token(tools) or _cost_per_token(history)
    items = []
    for definition in tools["content"]:
        tokens, size = await counter.measure_json_async(definition)
        executor, policy = executors.get(definition.get("name", ""), ("", ""))
        items.append(
            {
                "name": definition.get("name"),
                "executor": executor,
                "policy": policy,
                "byteCount": size,
                "tokenEstimate": tokens,
                "costEstimate": None if rate is None else round(tokens * rate, 9),
            }
        )
    tools["items"] = items
    calls = results = result_bytes = result_tokens = 0
    for turn in history["content"]:
        for block in turn["content"]:
            kind = block.get("type")
            if kind in ("tool_use", "server_tool_use"):
                calls += 1
            elif kind == "tool_result" or str(kind).endswith("_tool_result"):
                results += 1
                tokens, size = await counter.measure_json_async(block)
                result_tokens += tokens
                result_bytes += size
    history["toolCalls"] = calls
    history["toolResults"] = {"count": results, "byteCount": result_bytes, "tokenEstimate": result_tokens}
    total = frame["totals"]["tokenEstimate"]
    warnings: list[str] = []
    if total and result_tokens >= MIN_WARN_TOKENS and result_tokens / total > DOMINANT_SHARE:
        warnings.append(
            f"tool results are {result_tokens / total:.0%} of this context (about {result_tokens:,} of {total:,} "
            "tokens), and every later request pays for them again: consider a new session, or tools that return less"
        )
    frame["warnings"] = warnings


def _cost_per_token(section: dict[str, Any]) -> float | None:
    cost, tokens = section.get("costEstimate"), section.get("tokenEstimate")
    return cost / tokens if cost is not None and tokens else None
