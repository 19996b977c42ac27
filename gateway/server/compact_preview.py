"""What `context.inspect` adds about long sessions: what context editing left out of the request and what it saved
(`contextEditing`), and with `compact: true` a preview of a compaction before anything changes (`compaction`): what
would be summarised, what the summarisation request would cost, and the request the session would send after it
(docs/COMPACTION.md)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from gateway import errors
from gateway.billing.accounting import nano_to_usd
from gateway.billing.budgets import worst_case
from gateway.chat.compaction import plan_summary
from gateway.chat.services import Services
from gateway.context.assembly import Assembled, assemble
from gateway.context.inspection import (
    REQUEST_OVERHEAD_TOKENS,
    calibrated,
    editing_report,
    estimate_input_tokens,
    inspection_body,
    measure,
)
from gateway.context.window import compaction_due
from gateway.context.workspace import Workspace
from gateway.store import HistoryItem

PREVIEW_ID = "(preview)"


def _rate(s: Services, frame: dict[str, Any], model: str, at: datetime) -> int | None:
    best = frame["calibratedTokenEstimate"] or frame["totals"]["tokenEstimate"] + REQUEST_OVERHEAD_TOKENS
    return s.prices.input_rate(model, at, best)


async def add_editing(
    s: Services, frame: dict[str, Any], assembled: Assembled, workspace: Workspace, at: datetime
) -> None:
    rate = _rate(s, frame, assembled.model, at)
    frame["contextEditing"] = await editing_report(assembled, s.tokens, rate, workspace.context)


async def compaction_preview(
    s: Services,
    history: Sequence[HistoryItem],
    workspace: Workspace,
    model: str,
    tools: Sequence[dict[str, Any]],
    *,
    pending: str | None,
    max_tokens: int,
    at: datetime,
    ratio: float | None,
    current: int,
) -> dict[str, Any]:
    """`current`: the calibrated estimate of the request as it is now."""
    config = workspace.context
    preview: dict[str, Any] = {
        "autoCompact": config.auto_compact,
        "compactAt": config.compact_at,
        "keepTurns": config.keep_turns,
        "dueNow": compaction_due(s.prices, model, config, current, at),
    }
    try:
        plan = await plan_summary(s, history, workspace, model, tools, config.keep_turns)
    except (errors.NothingToCompact, errors.ContextTooLarge) as exc:
        return {**preview, "possible": False, "why": exc.message}
    request_tokens = calibrated(plan.estimate, ratio)
    rate = s.prices.input_rate(model, at, request_tokens)
    worst = worst_case(s.prices, model, workspace.cache_mode, request_tokens, plan.max_tokens, at)
    # The request after it, with a stand-in for the summary the model has yet to write.
    compacted = set(plan.compacted_ids)
    stand_in = HistoryItem(PREVIEW_ID, "assistant", [{"type": "text", "text": _STAND_IN}], PREVIEW_ID, kind="summary")
    after_history = [dataclasses.replace(m, compacted_by=PREVIEW_ID) if m.id in compacted else m for m in history]
    after = assemble(workspace, [*after_history, stand_in], pending=pending, model=model, max_tokens=max_tokens,
                     tools=tools)  # fmt: skip
    measured = await measure(after, s.tokens)
    body = inspection_body(after, measured, s.prices, at=at, ratio=ratio, context=config)
    after_tokens = calibrated(estimate_input_tokens(measured), ratio)
    stand_in_tokens = next(m.token_estimate for m in measured if m.section.name == "summary")
    return {
        **preview,
        "possible": True,
        "compactedMessages": len(plan.compacted_ids),
        "keptMessages": plan.kept,
        "request": {
            "tokenEstimate": request_tokens,
            "maxTokens": plan.max_tokens,
            "inputCostEstimate": None if rate is None else nano_to_usd(request_tokens * rate),
            "worstCaseCost": nano_to_usd(worst),
        },
        "after": {
            "sections": body["sections"],
            "totals": body["totals"],
            "tokenEstimate": after_tokens,
            # The summary is at most summary_max_tokens long; the stand-in above is a few tokens.
            "tokenEstimateAtMost": after_tokens - stand_in_tokens + plan.max_tokens,
            "contextWindow": body["contextWindow"],
            "windowShare": body["windowShare"],
        },
        "savedTokensAtLeast": current - (after_tokens - stand_in_tokens + plan.max_tokens),
    }


_STAND_IN = "(the summary the model will write in place of the compacted messages)"
