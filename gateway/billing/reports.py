"""The usage report: one builder behind `usage.query` and `agentspace usage`, so both show the same numbers.

Sums come from the store as exact integers (nano-USD); dollars are made here, at the edge.
"""

from __future__ import annotations

from typing import Any

from gateway.store import Store, UsageFilters, UsageTotals

from .accounting import nano_to_usd
from .budgets import AgentDirectory, BudgetGuard


def totals_fields(t: UsageTotals) -> dict[str, Any]:
    return {
        "inputTokens": t.input_tokens,
        "outputTokens": t.output_tokens,
        "cacheCreationInputTokens": t.cache_write_5m_tokens + t.cache_write_1h_tokens,
        "cacheCreation5mInputTokens": t.cache_write_5m_tokens,
        "cacheCreation1hInputTokens": t.cache_write_1h_tokens,
        "cacheReadInputTokens": t.cache_read_tokens,
        "totalTokens": t.total_tokens,
        "inputCost": nano_to_usd(t.input_cost),
        "outputCost": nano_to_usd(t.output_cost),
        "cacheCost": nano_to_usd(t.cache_write_cost + t.cache_read_cost),
        "cacheWriteCost": nano_to_usd(t.cache_write_cost),
        "cacheReadCost": nano_to_usd(t.cache_read_cost),
        "totalCost": nano_to_usd(t.total_cost),
        "totalCostNanoUsd": t.total_cost,
        "savedCost": nano_to_usd(t.uncached_cost - t.total_cost),
        # Server tools billed per use (web searches): what the total holds beyond the token costs.
        "serverToolCost": nano_to_usd(
            t.total_cost - t.input_cost - t.output_cost - t.cache_write_cost - t.cache_read_cost
        ),
        "requestCount": t.request_count,
        "unpricedRequests": t.unpriced_requests,
        # How much of the totals is the gateway's estimate (streams cut short before Anthropic's final count).
        "estimatedRequests": t.estimated_requests,
        "estimatedOutputTokens": t.estimated_output_tokens,
        "estimatedCost": nano_to_usd(t.estimated_cost),
        "estimatedCostNanoUsd": t.estimated_cost,
    }


async def usage_report(
    store: Store,
    filters: UsageFilters,
    group_by: str | None,
    *,
    budgets: BudgetGuard,
    workspaces: AgentDirectory,
) -> dict[str, Any]:
    """The `usage.report` frame without its id."""
    per_model = await store.usage.per_model(filters)
    grand = UsageTotals()
    for totals in per_model.values():
        grand.add(totals)
    report: dict[str, Any] = {
        "type": "usage.report",
        "perModel": {model: totals_fields(t) for model, t in per_model.items()},
        "grandTotal": totals_fields(grand),
        "unpricedRequests": grand.unpriced_requests,
    }
    if group_by is not None:
        groups = list(per_model.items()) if group_by == "model" else await store.usage.grouped(filters, group_by)
        report["groupBy"] = group_by
        if group_by == "key":
            report["groups"] = await _key_groups(store, groups)
        else:
            report["groups"] = [{"key": key, **totals_fields(t)} for key, t in groups]
    # Caps are about the current day and month whatever window was asked for; an agent filter narrows them.
    report["budgets"] = await budgets.status(workspaces, filters.agent_id)
    return report


async def _key_groups(store: Store, groups: list[tuple[str, UsageTotals]]) -> list[dict[str, Any]]:
    """Groups by gateway key, named by the key's name (`keyId` too); "" holds the requests made without a named key
    (with the single gateway token, or with no credential). Ordered by name."""
    names = {usage.key.id: usage.key.name for usage in await store.keys.listed()}
    named = [
        {"key": names.get(key_id, key_id) if key_id else "", "keyId": key_id or None, **totals_fields(t)}
        for key_id, t in groups
    ]
    return sorted(named, key=lambda group: str(group["key"]))
