"""What a reply's tool loop looks like to a client: the events `ChatStream.events()` yields besides text, the tools a
client runs itself (`ClientTool`), and how a handler reports a failure (`ToolError`)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from .types import Cost, Frame, Usage, cost_of, usage_of

Decision = Literal["allow_once", "allow_session", "deny"]
DECISIONS: tuple[Decision, ...] = ("allow_once", "allow_session", "deny")
ALLOWED = ("allow_once", "allow_session")


@dataclass(frozen=True, slots=True)
class ToolCall:
    """`chat.tool.call`: a call the model made, complete, before it runs. `executor`: builtin, mcp, client or none;
    `policy`: allow, ask or deny."""

    tool_use_id: str
    name: str
    input: dict[str, Any]
    executor: str
    policy: str
    step: int
    session_id: str
    message_id: str
    frame: Frame = field(repr=False)

    @classmethod
    def from_frame(cls, frame: Frame) -> ToolCall:
        raw = frame.get("input")
        return cls(
            frame["toolUseId"],
            frame["name"],
            raw if isinstance(raw, dict) else {},
            str(frame.get("executor")),
            str(frame.get("policy")),
            int(frame.get("step") or 0),
            frame.get("sessionId", ""),
            frame.get("messageId", ""),
            frame,
        )


@dataclass(frozen=True, slots=True)
class ToolInputDelta:
    """`chat.tool.input.delta` (only with `stream_tool_input=True`): a piece of a call's JSON input as it is written."""

    tool_use_id: str
    name: str
    delta: str
    frame: Frame = field(repr=False)


@dataclass(frozen=True, slots=True)
class ApprovalRequest:
    """`chat.tool.approval`: the call waits for `allow_once`, `allow_session` or `deny` until `expires_at` (then it
    is denied)."""

    tool_use_id: str
    name: str
    input: dict[str, Any]
    executor: str
    step: int
    session_id: str
    expires_at: datetime | None
    frame: Frame = field(repr=False)

    @classmethod
    def from_frame(cls, frame: Frame) -> ApprovalRequest:
        raw = frame.get("input")
        return cls(
            frame["toolUseId"],
            frame["name"],
            raw if isinstance(raw, dict) else {},
            str(frame.get("executor")),
            int(frame.get("step") or 0),
            frame.get("sessionId", ""),
            _time(frame.get("expiresAt")),
            frame,
        )


@dataclass(frozen=True, slots=True)
class ToolResult:
    """`chat.tool.result` from the gateway: a call's outcome as the model reads it. `status`: done, error, denied or
    interrupted; `content` is a preview (at most 2,000 characters; `truncated` says whether there was more)."""

    tool_use_id: str
    name: str
    status: str
    is_error: bool
    content: str
    truncated: bool
    duration_ms: int | None
    step: int
    frame: Frame = field(repr=False)

    @property
    def ok(self) -> bool:
        return self.status == "done" and not self.is_error

    @classmethod
    def from_frame(cls, frame: Frame) -> ToolResult:
        duration = frame.get("durationMs")
        return cls(
            frame["toolUseId"],
            frame.get("name", ""),
            str(frame.get("status")),
            bool(frame.get("isError")),
            str(frame.get("content") or ""),
            bool(frame.get("truncated")),
            int(duration) if isinstance(duration, int | float) else None,
            int(frame.get("step") or 0),
            frame,
        )


@dataclass(frozen=True, slots=True)
class StepEnd:
    """`chat.step.end`: one model request of the turn is over, with its own usage and cost."""

    step: int
    message_id: str
    stop_reason: str | None
    usage: Usage
    cost: Cost
    duration_ms: int
    tool_calls: int
    frame: Frame = field(repr=False)

    @classmethod
    def from_frame(cls, frame: Frame) -> StepEnd:
        return cls(
            int(frame.get("step") or 0),
            frame.get("messageId", ""),
            frame.get("stopReason"),
            usage_of(frame.get("usage") or {}),
            cost_of(frame.get("cost") or {}),
            int(frame.get("durationMs") or 0),
            int(frame.get("toolCalls") or 0),
            frame,
        )


class ToolError(Exception):
    """Raise it from a client tool's handler: its message goes back to the model as an error result (`isError`)."""


# A handler gets the call and returns its result: text, a list of content blocks ({"type": "text", "text": ...} or a
# base64 image block), or any other JSON value (sent as its JSON text). Raising is an error result.
ToolHandler = Callable[[ToolCall], Awaitable[object]]
ApprovalHandler = Callable[[ApprovalRequest], Awaitable[Decision | None]]


@dataclass(frozen=True, slots=True)
class ClientTool:
    """A tool this client runs: sent with `chat.send` as an Anthropic tool definition, and run by `handler` when the
    model calls it (once approved, when the agent's policy for it is `ask`)."""

    name: str
    handler: ToolHandler
    description: str = ""
    input_schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})

    @property
    def definition(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"name": self.name, "input_schema": self.input_schema}
        if self.description:
            fields["description"] = self.description
        return fields


# The gateway reads at most 1,024 JSON values in a frame (docs/PROTOCOL.md, "Limits"); the frame's own fields take
# a few of them.
MAX_RESULT_VALUES = 1000


def result_content(value: object) -> tuple[str | list[Any], bool]:
    """A handler's return value as a `chat.tool.result`'s content, and whether it must be sent as an error instead
    (a list of blocks too complex for one frame)."""
    if isinstance(value, str):
        return value, False
    if isinstance(value, list) and all(isinstance(b, dict) and b.get("type") in ("text", "image") for b in value):
        if _values(value) > MAX_RESULT_VALUES:
            return (
                f"The tool's result has too many parts for one frame (more than {MAX_RESULT_VALUES} JSON values); "
                "it should return text, or fewer blocks.",
                True,
            )
        return value, False
    if value is None:
        return "", False
    return json.dumps(value, ensure_ascii=False, default=str), False


def _values(value: object) -> int:
    if isinstance(value, dict):
        return 1 + sum(_values(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_values(v) for v in value)
    return 1


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
