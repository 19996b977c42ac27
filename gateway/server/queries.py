"""The requests that read or tidy state: sessions, history, usage reports and context inspection."""

from __future__ import annotations

from typing import Any

from gateway import errors
from gateway.billing.reports import usage_report
from gateway.chat.services import Services
from gateway.chat.turn_frames import model_for, session_key
from gateway.context.assembly import assemble
from gateway.context.inspection import calibrated, calibration_ratio, estimate_input_tokens, inspection_body, measure
from gateway.context.tool_inspection import tool_details
from gateway.protocol import Request, parse_time
from gateway.store import UsageFilters
from gateway.store.models import ChatSession, Message

from .compact_preview import add_editing, compaction_preview
from .tool_queries import call_fields, pending_fields


def session_fields(session: ChatSession) -> dict[str, Any]:
    return {
        "sessionId": session.id,
        "sessionKey": session_key(session),
        "agentId": session.agent_id,
        "title": session.title,
        "model": session.model,
        "createdAt": session.created_at,
        "updatedAt": session.updated_at,
        "messageCount": session.message_count,
    }


def message_fields(message: Message) -> dict[str, Any]:
    return {
        "messageId": message.id,
        "seq": message.seq,
        "role": message.role,
        "text": message.text,
        "content": message.content,
        "model": message.model,
        "status": message.status,
        "stopReason": message.stop_reason,
        "errorCode": message.error_code,
        "kind": message.kind,
        "compacted": message.compacted_by is not None,
        "compactedBy": message.compacted_by,
        "createdAt": message.created_at,
        "updatedAt": message.updated_at,
    }


async def _session(s: Services, session_id: str) -> ChatSession:
    session = await s.store.chats.get_session(session_id)
    if session is None:
        raise errors.SessionNotFound(f"session {session_id} does not exist", sessionId=session_id)
    return session


async def session_list(s: Services, req: Request) -> dict[str, Any]:
    limit = min(req.get("limit") or 50, s.settings.max_sessions_per_page)
    agent_id = req.get("agentId")
    if agent_id is not None:
        s.workspaces.load(agent_id)  # a bad or unknown agent id gets its own clear error
    page = await s.store.sessions.list_sessions(agent_id, limit, req.get("cursor"))
    return {
        "type": "session.list",
        "sessions": [session_fields(row) for row in page.sessions],
        "nextCursor": page.next_cursor,
        "limit": limit,
    }


async def session_history(s: Services, req: Request) -> dict[str, Any]:
    session = await _session(s, req.get("sessionId"))
    page = await s.store.sessions.history(session.id, req.get("limit"), req.get("beforeSeq"))
    calls = await s.store.tools.calls_of([m.id for m in page.messages if m.role == "assistant"])
    pending = await s.store.tools.pending(session.id, s.clock.now())
    return {
        "type": "session.history.result",
        **session_fields(session),
        "messages": [message_fields(m) for m in page.messages],
        "hasMore": page.has_more,
        "toolCalls": [call_fields(c) for c in calls],
        "pending": [pending_fields(c) for c in pending],
    }


async def session_delete(s: Services, req: Request) -> dict[str, Any]:
    session_id: str = req.get("sessionId")
    lease = await s.locks.acquire(session_id)  # never delete under a running stream
    try:
        if not await s.store.chats.delete_session(session_id):
            raise errors.SessionNotFound(f"session {session_id} does not exist", sessionId=session_id)
    finally:
        await lease.release()
    return {"type": "session.deleted", "sessionId": session_id}


MAX_AGENTS_LISTED = 1000


async def agent_list(s: Services, req: Request) -> dict[str, Any]:
    """The agents a chat.send may name: `default` and every agent folder, sorted by id."""
    names = s.workspaces.list_agents()
    agents = []
    for agent_id in names[:MAX_AGENTS_LISTED]:
        try:
            workspace = s.workspaces.load(agent_id)
        except errors.AgentNotFound:
            continue  # its folder went away between the listing and the read
        agents.append(
            {
                "agentId": agent_id,
                "model": workspace.model or s.settings.default_model,
                "modelSource": "agent" if workspace.model else "default",
                "skillCount": len(workspace.skills),
                "mcpServerCount": len(workspace.tool_config.mcp),
                "problemCount": len(workspace.problems),
            }
        )
    return {"type": "agent.list", "agents": agents, "truncated": len(names) > MAX_AGENTS_LISTED}


async def usage_query(s: Services, req: Request) -> dict[str, Any]:
    key_id: str | None = None
    key_name: str | None = req.get("keyName")
    if key_name is not None:
        key = await s.store.keys.by_name(key_name)
        if key is None:
            raise errors.InvalidMessage(f"usage.query: no gateway key is named {key_name!r}", field="keyName")
        key_id = key.id
    filters = UsageFilters(
        session_id=req.get("sessionId"),
        agent_id=req.get("agentId"),
        model=req.get("model"),
        since=parse_time(req.get("since"), "since"),
        until=parse_time(req.get("until"), "until"),
        key_id=key_id,
    )
    return await usage_report(s.store, filters, req.get("groupBy"), budgets=s.budgets, workspaces=s.workspaces)


async def context_inspect(s: Services, req: Request) -> dict[str, Any]:
    session_id: str = req.get("sessionId")
    session, history = await s.store.chats.session_with_history(session_id)
    if session is None:
        raise errors.SessionNotFound(f"session {session_id} does not exist", sessionId=session_id)
    workspace = s.workspaces.load(session.agent_id)
    model, model_source = model_for(req.get("model"), session, workspace.model, s.settings.default_model)
    max_tokens = workspace.max_tokens or s.settings.default_max_tokens
    draft: str | None = req.get("content")
    # A blank draft is no draft: chat.send would refuse it, and the API rejects empty text blocks.
    pending = draft if draft is not None and draft.strip() else None
    toolbox = await s.tools.toolbox(workspace, req.get("tools"))
    tools = toolbox.definitions
    assembled = assemble(workspace, history, pending=pending, model=model, max_tokens=max_tokens, tools=tools)
    ratio = calibration_ratio(await s.store.chats.calibration(model))
    at = s.clock.now()
    measured = await measure(assembled, s.tokens)
    frame: dict[str, Any] = {
        "type": "context.inspection",
        "sessionId": session.id,
        "sessionKey": session_key(session),
        "agentId": session.agent_id,
        **inspection_body(assembled, measured, s.prices, at=at, ratio=ratio, context=workspace.context),
        "modelSource": model_source,
        "problems": [*workspace.problems, *toolbox.problems],
    }
    await tool_details(frame, s.tokens, {t.name: (t.executor, t.policy) for t in toolbox.tools})
    await add_editing(s, frame, assembled, workspace, at)
    if req.get("compact"):
        current = calibrated(estimate_input_tokens(measured), ratio)
        frame["compaction"] = await compaction_preview(
            s,
            history,
            workspace,
            model,
            tools,
            pending=pending,
            max_tokens=max_tokens,
            at=at,
            ratio=ratio,
            current=current,
        )
    if req.get("exact"):
        try:
            frame["exactInputTokens"] = await s.upstream.count_tokens(assembled.params)
        except errors.GatewayError as exc:
            frame["exactInputTokens"] = None
            frame["exactError"] = {"code": exc.code, "message": exc.message, "retryable": exc.retryable}
    return frame
