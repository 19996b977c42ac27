"""The frames and the usage row a turn produces, kept apart from the turn's control flow."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gateway import errors
from gateway.billing.accounting import Priced, TokenUsage, nano_to_usd
from gateway.protocol import RequestId, error_frame
from gateway.store import TurnRows
from gateway.store.chats import new_id
from gateway.store.models import ChatSession, Message
from gateway.store.usage_row import UsageRow


def usage_fields(usage: TokenUsage) -> dict[str, int]:
    return {
        "inputTokens": usage.input_tokens,
        "outputTokens": usage.output_tokens,
        "cacheCreationInputTokens": usage.cache_creation_input_tokens,
        "cacheReadInputTokens": usage.cache_read_tokens,
        "cacheCreation5mInputTokens": usage.cache_write_5m_tokens,
        "cacheCreation1hInputTokens": usage.cache_write_1h_tokens,
        "totalTokens": usage.total_tokens,
    }


def cost_fields(priced: Priced | None) -> dict[str, Any]:
    cost = priced.cost if priced is not None else None
    if cost is None:
        return {
            "inputCost": None,
            "outputCost": None,
            "cacheCost": None,
            "cacheWriteCost": None,
            "cacheReadCost": None,
            "totalCost": None,
            "savedCost": None,
            "serverToolCost": None,
            "priced": False,
        }
    return {
        "inputCost": nano_to_usd(cost.input),
        "outputCost": nano_to_usd(cost.output),
        "cacheCost": nano_to_usd(cost.cache_write + cost.cache_read),
        "cacheWriteCost": nano_to_usd(cost.cache_write),
        "cacheReadCost": nano_to_usd(cost.cache_read),
        "totalCost": nano_to_usd(cost.total),
        "savedCost": nano_to_usd(cost.saved),
        "serverToolCost": nano_to_usd(cost.server_tool),
        "priced": True,
    }


def end_frame(
    rid: RequestId, rows: TurnRows, stop_reason: str | None, priced: Priced | None, duration_ms: int, status: str
) -> dict[str, Any]:
    usage = priced.usage if priced is not None else TokenUsage()
    return {
        "type": "chat.stream.end",
        "id": rid,
        "sessionId": rows.session.id,
        "messageId": rows.assistant_message.id,
        "stopReason": stop_reason,
        "status": status,
        "usage": usage_fields(usage),
        "cost": cost_fields(priced),
        "durationMs": duration_ms,
    }


def duplicate_frame(rid: RequestId, user: Message, reply: Message | None) -> dict[str, Any]:
    """The answer to a resent `chat.send` whose idempotencyKey was seen: the existing turn's state, no new request."""
    return {
        "type": "chat.state",
        "id": rid,
        "duplicate": True,
        "sessionId": user.session_id,
        "userMessageId": user.id,
        "messageId": reply.id if reply is not None else None,
        "status": reply.status if reply is not None else "pending",
        "stopReason": reply.stop_reason if reply is not None else None,
        "text": reply.text if reply is not None else "",
    }


def usage_record(
    rows: TurnRows,
    priced: Priced,
    status: str,
    duration_ms: int,
    first_token_ms: int | None,
    estimated_input_tokens: int | None,
    upstream_message_id: str | None,
    sent_at: datetime,
    step: int | None = None,
    server_tools: dict[str, int] | None = None,
    *,
    usage_id: str | None = None,
    estimated: int = 0,
) -> UsageRow:
    """The usage row of one upstream request, dated when it was sent: the moment its rates are from, so the row's
    day (in reports and budgets) and its rates always agree. `usage_id`: the id its provisional row has (chat/spend.py);
    `estimated`: how many of its output tokens are our estimate."""
    usage, rates, cost = priced.usage, priced.rates, priced.cost
    server_tools = server_tools or {}
    return UsageRow(
        id=usage_id or new_id(),
        session_id=rows.session.id,
        message_id=rows.assistant_message.id,
        agent_id=rows.session.agent_id,
        model=priced.model,
        status=status,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_write_5m_tokens=usage.cache_write_5m_tokens,
        cache_write_1h_tokens=usage.cache_write_1h_tokens,
        cache_read_tokens=usage.cache_read_tokens,
        input_cost=cost.input if cost else None,
        output_cost=cost.output if cost else None,
        cache_write_cost=cost.cache_write if cost else None,
        cache_read_cost=cost.cache_read if cost else None,
        total_cost=cost.total if cost else None,
        uncached_cost=cost.uncached if cost else None,
        rate_input=rates.input if rates else None,
        rate_output=rates.output if rates else None,
        rate_cache_write_5m=rates.cache_write_5m if rates else None,
        rate_cache_write_1h=rates.cache_write_1h if rates else None,
        rate_cache_read=rates.cache_read if rates else None,
        price_source=priced.source,
        price_tier=priced.tier,
        estimated_input_tokens=estimated_input_tokens,
        upstream_message_id=upstream_message_id,
        duration_ms=duration_ms,
        first_token_ms=first_token_ms,
        created_at=sent_at,
        key_id=rows.key_id,
        step=step,
        server_tool_cost=cost.server_tool if cost else None,
        web_search_requests=server_tools.get("web_search_requests", 0),
        web_fetch_requests=server_tools.get("web_fetch_requests", 0),
        purpose=rows.purpose,
        estimated=estimated > 0,
        estimated_output_tokens=estimated,
        estimated_cost=estimated * rates.output if rates is not None and cost is not None else 0,
    )


def model_for(asked: str | None, session: ChatSession | None, agent_model: str | None, default: str) -> tuple[str, str]:
    """The model a send (or an inspection) uses, and why: the one asked for ("request"), else the one the session has
    been using ("session"), else the agent's or the gateway's default ("default")."""
    if asked:
        return asked, "request"
    if session is not None and session.model:
        return session.model, "session"
    return agent_model or default, "default"


def session_key(session: ChatSession) -> str:
    return f"agent:{session.agent_id}:{session.id}"


def error_with(exc: errors.GatewayError, rid: RequestId, **details: Any) -> dict[str, Any]:
    """The error frame for `exc`, with the turn's ids (and partial text) added to its details where not set."""
    for key, value in details.items():
        if value is not None:
            exc.details.setdefault(key, value)
    return error_frame(exc, rid)
