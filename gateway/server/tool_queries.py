"""The client frames of the tool loop that are answered at once: an approval (`chat.tool.approve`), a client tool's
result (`chat.tool.result`) and the list of approvals waiting for an answer (`session.pending`)."""

from __future__ import annotations

from typing import Any

from gateway import errors
from gateway.chat.services import Services
from gateway.protocol import Request
from gateway.store.models import ToolCall
from gateway.tools.base import ToolOutcome


def pending_fields(call: ToolCall) -> dict[str, Any]:
    return {
        "sessionId": call.session_id,
        "messageId": call.message_id,
        "step": call.step,
        "toolUseId": call.tool_use_id,
        "name": call.name,
        "input": call.input,
        "executor": call.executor,
        "requestedAt": call.created_at,
        "expiresAt": call.expires_at,
    }


def call_fields(call: ToolCall) -> dict[str, Any]:
    """A call as session.history shows it, beside the messages that hold its tool_use and tool_result."""
    return {
        **pending_fields(call),
        "resultMessageId": call.result_message_id,
        "policy": call.policy,
        "status": call.status,
        "decision": call.decision,
        "isError": call.is_error,
        "durationMs": call.duration_ms,
        "startedAt": call.started_at,
        "finishedAt": call.finished_at,
    }


async def tool_approve(s: Services, req: Request) -> tuple[dict[str, Any], ToolCall]:
    tool_use_id: str = req.get("toolUseId")
    decision: str = req.get("decision")
    taken, call = await s.store.tools.decide(tool_use_id, decision, s.clock.now())
    session_id = req.get("sessionId")
    if call is None or (session_id is not None and call.session_id != session_id):
        raise errors.ToolCallNotFound(f"no tool call {tool_use_id}", toolUseId=tool_use_id)
    if not taken:
        state = call.decision or call.status
        raise errors.ApprovalNotPending(
            f"tool call {tool_use_id} is not waiting for approval (it is {state})",
            toolUseId=tool_use_id,
            status=call.status,
            decision=call.decision,
            sessionId=call.session_id,
        )
    s.tools.waits.resolve(f"approval:{tool_use_id}", decision)
    frame = {
        "type": "chat.tool.approval.recorded",
        "sessionId": call.session_id,
        "toolUseId": tool_use_id,
        "decision": decision,
    }
    return frame, call


def client_result(s: Services, req: Request) -> dict[str, Any]:
    tool_use_id: str = req.get("toolUseId")
    outcome = ToolOutcome(req.get("content"), bool(req.get("isError")))
    if not s.tools.waits.resolve(f"result:{tool_use_id}", outcome):
        raise errors.ToolCallNotFound(
            f"no client tool call {tool_use_id} is waiting for a result (unknown, answered, or timed out)",
            toolUseId=tool_use_id,
        )
    return {"type": "chat.tool.result.recorded", "toolUseId": tool_use_id}


async def session_pending(s: Services, req: Request) -> dict[str, Any]:
    session_id = req.get("sessionId")
    if session_id is not None and await s.store.chats.get_session(session_id) is None:
        raise errors.SessionNotFound(f"session {session_id} does not exist", sessionId=session_id)
    calls = await s.store.tools.pending(session_id, s.clock.now())
    return {"type": "session.pending", "sessionId": session_id, "approvals": [pending_fields(c) for c in calls]}
