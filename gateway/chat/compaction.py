"""Compacting a session: the model summarises its older part, and the summary replaces it in what is sent
(docs/COMPACTION.md). One model request, budgeted, relayed and accounted like a turn's (its usage row says
`purpose = 'compaction'`), and one write at the end; nothing is written before it, so a compaction that fails, is
cancelled or dies with its process leaves the session as it was.

The summarisation request is the session's own request up to the cut (same tools, system, summary and edits) with one
more user turn asking for the summary: its prefix is the one the session's requests have been caching, so it is read
from the prompt cache rather than paid for again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import errors
from gateway.billing.accounting import Priced
from gateway.context.assembly import Assembled, assemble
from gateway.context.compaction import cuts, split_history, summary_content, summary_request
from gateway.context.editing import plan_edits
from gateway.context.inspection import calibrated, calibration_ratio, estimate_input_tokens, measure
from gateway.context.window import effective_window
from gateway.context.workspace import Workspace
from gateway.protocol import RequestId
from gateway.store import HistoryItem, TurnRows
from gateway.store.chats import new_id
from gateway.store.models import ApiKey, ChatSession, Message

from .relay import Relay
from .services import Services
from .spend import estimate_output
from .step_frames import Totals
from .turn_end import Ending, account, unstoppable

Send = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Summarised:
    summary_id: str
    text: str
    compacted: int  # messages marked compacted
    kept: int  # messages after the cut, still sent
    through_seq: int
    priced: Priced  # the request, its billed retries included
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Plan:
    """The summarisation request for one cut, measured."""

    compacted_ids: list[str]
    kept: int
    assembled: Assembled
    estimate: int

    @property
    def max_tokens(self) -> int:
        """The summary's length limit."""
        return int(self.assembled.params["max_tokens"])


async def plan_summary(
    s: Services,
    history: Sequence[HistoryItem],
    workspace: Workspace,
    model: str,
    tools: Sequence[dict[str, Any]],
    keep_turns: int,
    instructions: str = "",
) -> Plan:
    """The newest cut keeping `keep_turns` turns whose summarisation request fits the window (with room for the
    summary). NOTHING_TO_COMPACT when no cut summarises anything; CONTEXT_TOO_LARGE when none fits."""
    config = workspace.context
    prompt = summary_request("\n".join(t for t in (config.summary_instructions, instructions) if t.strip()))
    window = effective_window(s.prices, model, config)
    # A summary may take a quarter of a small window at most, or it would leave little room for the turns after it.
    max_tokens = min(config.summary_max_tokens, window // 4) if window else config.summary_max_tokens
    ratio = calibration_ratio(await s.store.chats.calibration(model))
    # Edited as the session's next request will be, so the prefix matches what the prompt cache holds.
    plan = plan_edits(split_history(history)[1], config, pending=True)
    candidates = cuts(history, keep_turns)
    if not candidates:
        raise errors.NothingToCompact(
            f"nothing to compact: the session has no messages older than the {keep_turns} turn(s) it keeps"
        )
    expected = 0
    for cut in candidates:
        assembled = assemble(workspace, cut.older, pending=prompt, model=model,
                             max_tokens=max_tokens, tools=tools, edit_plan=plan)  # fmt: skip
        estimate = estimate_input_tokens(await measure(assembled, s.tokens))
        expected = calibrated(estimate, ratio)
        if window is None or expected + max_tokens <= window:
            return Plan(cut.compacted_ids, len(cut.kept), assembled, estimate)
    raise errors.ContextTooLarge(
        f"even the oldest turn cannot be summarised: its summarisation request is about {expected:,} tokens and the"
        f" window here is {window:,}",
        tokenEstimate=expected,
        contextWindow=window,
    )


async def summarise(
    s: Services, session: ChatSession, workspace: Workspace, plan: Plan, *, rid: RequestId, key: ApiKey | None
) -> Summarised:
    """Run the summarisation request and store its summary. Budgeted like any request (BUDGET_EXCEEDED before
    anything is sent); an upstream failure, an empty answer or a cancel leaves the session unchanged, the request's
    usage row recorded all the same."""
    model = plan.assembled.model
    budget = await s.budgets.reserve(workspace, model, plan.estimate, plan.max_tokens, key=key)
    try:
        return await _summarise(s, session, plan, rid, key, budget.ids if budget is not None else ())
    finally:
        if budget is not None:
            await budget.release()  # after the usage row: it counts instead now


async def _summarise(
    s: Services, session: ChatSession, plan: Plan, rid: RequestId, key: ApiKey | None, held: tuple[str, ...]
) -> Summarised:
    assembled = plan.assembled
    summary_id = new_id()
    message = Message(id=summary_id, session_id=session.id, role="assistant", kind="summary")
    rows = TurnRows(session, message, message, False, key.id if key is not None else None, purpose="compaction")
    started = time.monotonic()
    relay = Relay(s, s.metrics.turn(rid), rows, assembled, rid, _nowhere, started, reservation_ids=held)
    failure: errors.GatewayError | None = None
    status = "complete"
    try:
        async with asyncio.timeout(s.settings.upstream_total_timeout_s):
            await relay.run(_nothing)
    except asyncio.CancelledError:
        status = "cancelled"
    except errors.GatewayError as exc:
        failure, status = exc, "failed"
    except TimeoutError:
        failure, status = errors.UpstreamTimeout("the request took longer than the total upstream timeout"), "failed"
    relay.usage_ended()
    if status != "complete":
        await estimate_output(s, assembled.model, relay.reply)
    ending = Ending(status, failure, started, relay.first_token_ms, relay.sent_at)
    accounted = account(s, rows, relay.reply, assembled, plan.estimate, ending, 1)
    totals = Totals(assembled.model)
    for attempt in relay.failed_attempts:
        totals.add(attempt)
    totals.add(accounted.priced)
    text = relay.reply.text.strip()
    if status != "complete" or not text:
        if accounted.record is not None:
            await unstoppable(asyncio.ensure_future(s.store.usage.insert(accounted.record)))
        if status == "cancelled":
            raise asyncio.CancelledError
        raise failure or errors.CompactionFailed("the model's answer held no summary; the session is unchanged")
    summary = {
        "id": summary_id,
        "content": summary_content(text),
        "text": text,
        "model": assembled.model,
        "stop_reason": relay.reply.stop_reason,
    }
    writing = asyncio.ensure_future(
        s.store.compactions.apply(
            session_id=session.id,
            summary=summary,
            compacted_ids=plan.compacted_ids,
            usage=accounted.record,
            calibration=accounted.calibration,
        )
    )
    # Once the write has begun it is judged by its outcome, not by a cancel arriving meanwhile: a compaction that
    # was stored is reported as stored.
    await unstoppable(writing)
    stored = writing.result()
    return Summarised(summary_id, text, stored.compacted, plan.kept, stored.through_seq, totals.priced(),
                      accounted.duration_ms)  # fmt: skip


async def _nowhere(_: str) -> None:
    """The summary is not streamed to the client: it arrives whole, in the `session.compacted` frame."""


def _nothing() -> None:
    return None
