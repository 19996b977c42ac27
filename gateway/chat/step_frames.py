"""What a tool loop adds to a turn's frames: a turn's running totals over its model requests, and the frames of each
step and tool call (docs/PROTOCOL.md shows a whole turn)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.billing.accounting import Cost, Priced, TokenUsage
from gateway.protocol import RequestId
from gateway.tools.base import Content, preview

from .turn_frames import cost_fields, usage_fields


@dataclass(slots=True)
class Totals:
    """Sums over every model request of the turn (retried attempts that were billed included), so the end frame
    equals SQL over the turn's usage rows."""

    model: str
    usage: TokenUsage = field(default_factory=TokenUsage)
    cost: Cost | None = field(default_factory=lambda: Cost(0, 0, 0, 0, 0))
    requests: int = 0
    steps: int = 0
    tool_calls: int = 0

    def add(self, priced: Priced | None) -> None:
        self.requests += 1
        if priced is None:
            return  # the request was not billed (it failed before the upstream reported usage)
        self.usage = self.usage.plus(priced.usage)
        self.cost = None if self.cost is None or priced.cost is None else self.cost.plus(priced.cost)

    def priced(self) -> Priced:
        return Priced(self.model, self.usage, None, self.cost, None, None)


@dataclass(frozen=True, slots=True)
class StepIds:
    """Where a step's frames belong: the chat.send's id, the session, the step's reply message and its number."""

    rid: RequestId
    session_id: str
    message_id: str
    step: int

    def frame(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {
            "type": kind,
            "id": self.rid,
            "sessionId": self.session_id,
            "messageId": self.message_id,
            "step": self.step,
            **fields,
        }


def step_end_frame(
    ids: StepIds, stop_reason: str | None, priced: Priced | None, duration_ms: int, tool_calls: int
) -> dict[str, Any]:
    usage = priced.usage if priced is not None else TokenUsage()
    return ids.frame(
        "chat.step.end",
        stopReason=stop_reason,
        usage=usage_fields(usage),
        cost=cost_fields(priced),
        durationMs=duration_ms,
        toolCalls=tool_calls,
    )


def call_frame(ids: StepIds, block: dict[str, Any], executor: str, policy: str) -> dict[str, Any]:
    return ids.frame(
        "chat.tool.call",
        toolUseId=block["id"],
        name=block["name"],
        input=block.get("input", {}),
        executor=executor,
        policy=policy,
    )


def approval_frame(ids: StepIds, block: dict[str, Any], executor: str, expires_at: datetime) -> dict[str, Any]:
    return ids.frame(
        "chat.tool.approval",
        toolUseId=block["id"],
        name=block["name"],
        input=block.get("input", {}),
        executor=executor,
        expiresAt=expires_at,
    )


def result_frame(
    ids: StepIds, block: dict[str, Any], status: str, content: Content, is_error: bool, duration_ms: int | None
) -> dict[str, Any]:
    text, truncated = preview(content)
    return ids.frame(
        "chat.tool.result",
        toolUseId=block["id"],
        name=block["name"],
        status=status,
        isError=is_error,
        content=text,
        truncated=truncated,
        durationMs=duration_ms,
    )
