"""When a session is compacted: on request (`session.compact`, a job holding its connection's stream slot until its
one answer, cancellable with `chat.cancel`) and automatically, before a turn whose request would pass the agent's
threshold (docs/COMPACTION.md). Either way the client gets a `session.compacted` frame with what it did and cost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway import errors
from gateway.context.assembly import Assembled, assemble
from gateway.context.compaction import cuts
from gateway.context.inspection import calibrated, calibration_ratio, estimate_input_tokens, measure
from gateway.context.window import compaction_due, effective_window
from gateway.context.workspace import Workspace
from gateway.protocol import Request, RequestId
from gateway.store import HistoryItem
from gateway.store.models import ApiKey, ChatSession

from .compaction import Send, Summarised, plan_summary, summarise
from .services import Services
from .turn_frames import cost_fields, error_with, usage_fields

log = logging.getLogger(__name__)
# Passes before a turn: the agent's keep_turns first; if the request is still over, once more keeping no turn.
AUTO_PASSES = 2


def compacted_frame(
    rid: RequestId, session_id: str, done: Summarised, *, trigger: str, before: int, after: int, reason: str | None
) -> dict[str, Any]:
    return {
        "type": "session.compacted",
        "id": rid,
        "sessionId": session_id,
        "trigger": trigger,
        "reason": reason,
        "summaryMessageId": done.summary_id,
        "summary": done.text,
        "compactedMessages": done.compacted,
        "keptMessages": done.kept,
        "throughSeq": done.through_seq,
        "tokensBefore": before,
        "tokensAfter": after,
        "usage": usage_fields(done.priced.usage),
        "cost": cost_fields(done.priced),
        "durationMs": done.duration_ms,
    }


async def _estimate(s: Services, assembled: Assembled) -> int:
    ratio = calibration_ratio(await s.store.chats.calibration(assembled.model))
    return calibrated(estimate_input_tokens(await measure(assembled, s.tokens)), ratio)


class CompactJob:
    """One `session.compact`. Shaped like a turn where its connection looks (`over`, `session_id`, `rid`, `task`,
    `cancel_reason`, `phase`), so `chat.cancel`, a client leaving and shutdown stop it as they stop a turn."""

    def __init__(self, services: Services, request: Request, send: Send, key: ApiKey | None = None) -> None:
        self.s = services
        self.request = request
        self.send = send
        self.key = key
        self.session_id: str | None = request.get("sessionId")
        self.cancel_reason: str | None = None
        self.over = False
        self.phase = "compacting"
        self.detached = False
        self.task: asyncio.Task[None] | None = None

    @property
    def rid(self) -> RequestId:
        return self.request.id

    def detach(self) -> None:
        """Never called: only a turn running tools outlives its client."""

    async def run(self) -> None:
        lease = None
        try:
            assert self.session_id is not None
            lease = await self.s.locks.acquire(self.session_id)
            frame = await self._compact(self.session_id)
        except errors.GatewayError as exc:
            frame = error_with(exc, self.rid, sessionId=self.session_id)
        except asyncio.CancelledError:
            cancelled = errors.Cancelled("the compaction was cancelled; the session is unchanged")
            frame = error_with(cancelled, self.rid, sessionId=self.session_id)
        except Exception as exc:
            log.exception("compaction failed unexpectedly")
            frame = error_with(errors.InternalError(f"internal error: {type(exc).__name__}"), self.rid)
        finally:
            if lease is not None:
                await lease.release()
        self.over = True
        await self.send(frame)

    async def _compact(self, session_id: str) -> dict[str, Any]:
        s = self.s
        session, history = await s.store.chats.session_with_history(session_id)
        if session is None:
            raise errors.SessionNotFound(f"session {session_id} does not exist", sessionId=session_id)
        workspace = s.workspaces.load(session.agent_id)
        orphans = [m.id for m in history if m.status == "streaming"]
        if orphans:  # we hold the session's lock: a reply still streaming was left by a process that died
            await s.store.chats.recover_interrupted(message_ids=orphans)
            session, history = await s.store.chats.session_with_history(session_id)
            assert session is not None
        tools = (await s.tools.toolbox(workspace, None)).definitions
        model, max_tokens = session.model, workspace.max_tokens or s.settings.default_max_tokens
        keep = self.request.get("keepTurns", workspace.context.keep_turns)

        def next_request(history: list[HistoryItem]) -> Assembled:
            return assemble(workspace, history, pending=None, model=model, max_tokens=max_tokens, tools=tools)

        before = await _estimate(s, next_request(history))
        plan = await plan_summary(s, history, workspace, model, tools, keep, self.request.get("instructions") or "")
        s.upstream.client()  # MISSING_API_KEY before anything is sent
        done = await summarise(s, session, workspace, plan, rid=self.rid, key=self.key)
        _, history = await s.store.chats.session_with_history(session_id)
        after = await _estimate(s, next_request(history))
        return compacted_frame(self.rid, session_id, done, trigger="manual", before=before, after=after, reason=None)


@dataclass(frozen=True, slots=True)
class Before:
    """What a turn is about to send, for the automatic compaction that may precede it."""

    session: ChatSession
    history: list[HistoryItem]
    workspace: Workspace
    model: str
    max_tokens: int
    pending: str | None
    tools: Sequence[dict[str, Any]]
    estimate: int


async def _hopeless(s: Services, turn: Before, ratio: float | None) -> bool:
    """Whether the turn's request would pass the window even with no history at all."""
    window = effective_window(s.prices, turn.model, turn.workspace.context)
    if window is None:
        return False
    bare = assemble(turn.workspace, [], pending=turn.pending, model=turn.model, max_tokens=turn.max_tokens,
                    tools=turn.tools)  # fmt: skip
    return calibrated(estimate_input_tokens(await measure(bare, s.tokens)), ratio) > window


async def compact_if_due(
    s: Services, send: Send, rid: RequestId, key: ApiKey | None, turn: Before
) -> tuple[ChatSession, list[HistoryItem], Assembled, int] | None:
    """Compact the session first when the turn's request would pass the agent's threshold and automatic compaction
    is on; the session, history, request and estimate as they then are, or None when nothing was done. Each pass sends
    a `session.compacted` frame (`trigger: "auto"`) with its cost."""
    config, model = turn.workspace.context, turn.model
    if not config.auto_compact:
        return None
    ratio = calibration_ratio(await s.store.chats.calibration(model))
    expected = calibrated(turn.estimate, ratio)
    reason = compaction_due(s.prices, model, config, expected, s.clock.now())
    if reason is not None and await _hopeless(s, turn, ratio):
        return None  # the new message alone is over the window: no summary would make room, so pay for none
    session, history, found = turn.session, turn.history, None
    for keep in (config.keep_turns, 0)[:AUTO_PASSES]:
        if reason is None or not cuts(history, keep):
            continue
        try:
            plan = await plan_summary(s, history, turn.workspace, session.model or model, turn.tools, keep)
        except (errors.NothingToCompact, errors.ContextTooLarge):
            continue  # nothing this pass can do; the window check that follows says what is wrong
        done = await summarise(s, session, turn.workspace, plan, rid=rid, key=key)
        fresh, history = await s.store.chats.session_with_history(session.id)
        if fresh is None:
            raise errors.SessionNotFound(f"session {session.id} does not exist", sessionId=session.id)
        session = fresh
        assembled = assemble(turn.workspace, history, pending=turn.pending, model=model, max_tokens=turn.max_tokens,
                             tools=turn.tools)  # fmt: skip
        estimate = estimate_input_tokens(await measure(assembled, s.tokens))
        after = calibrated(estimate, ratio)
        await send(compacted_frame(rid, session.id, done, trigger="auto", before=expected, after=after, reason=reason))
        found, expected = (session, history, assembled, estimate), after
        reason = compaction_due(s.prices, model, config, expected, s.clock.now())
    return found
