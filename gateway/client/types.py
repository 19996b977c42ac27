"""The values `gateway.client` hands out: streamed deltas and a reply's end frame (usage and cost)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

Frame = dict[str, Any]
TERMINAL = ("chat.stream.end", "chat.state", "error")  # the frames that end a chat.send's answer


def normalize_url(url: str) -> str:
    """Accept `ws://host:port/gateway`, `http://host:port` or `host:port`; answer the WebSocket URL."""
    if "://" not in url:
        url = "ws://" + url
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path if parts.path not in ("", "/") else "/gateway"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


@dataclass(frozen=True, slots=True)
class Delta:
    """One streamed chunk. Thinking comes on its own deltas and is never part of the answer's text."""

    kind: Literal["text", "thinking"]
    text: str

    @property
    def is_thinking(self) -> bool:
        return self.kind == "thinking"


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    # input + output + cache writes + cache reads (the frame's `totalTokens`; summed here if an older gateway
    # left it out).
    total_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Cost:
    """USD. Every amount is None when the model has no known price (`priced` False)."""

    input: float | None = None
    output: float | None = None
    cache: float | None = None
    total: float | None = None
    saved: float | None = None
    priced: bool = False


@dataclass(frozen=True, slots=True)
class ChatEnd:
    """The `chat.stream.end` frame of a reply."""

    session_id: str
    message_id: str
    stop_reason: str | None
    status: str
    usage: Usage
    cost: Cost
    duration_ms: int
    frame: Frame = field(repr=False)
    # The database was down when the reply ended: the gateway holds it and saves it when the database is back.
    pending_save: bool = False
    requests: int = 1  # upstream requests the turn made (a tool loop makes several; a retry is one more)
    steps: int = 1  # model requests of the tool loop
    tool_calls: int = 0
    bound_hit: str | None = None  # which of the agent's bounds ended the tool loop, if one did

    @classmethod
    def from_frame(cls, frame: Frame) -> ChatEnd:
        return cls(
            session_id=frame["sessionId"],
            message_id=frame["messageId"],
            stop_reason=frame.get("stopReason"),
            status=frame.get("status", "complete"),
            usage=usage_of(frame.get("usage") or {}),
            cost=cost_of(frame.get("cost") or {}),
            duration_ms=int(frame.get("durationMs") or 0),
            frame=frame,
            pending_save=bool(frame.get("pendingSave")),
            requests=int(frame.get("requests") or 1),
            steps=int(frame.get("steps") or 1),
            tool_calls=int(frame.get("toolCalls") or 0),
            bound_hit=frame.get("boundHit"),
        )


def cost_of(c: Frame) -> Cost:
    return Cost(
        c.get("inputCost"),
        c.get("outputCost"),
        c.get("cacheCost"),
        c.get("totalCost"),
        c.get("savedCost"),
        bool(c.get("priced")),
    )


def usage_of(u: Frame) -> Usage:
    counts = (
        u.get("inputTokens", 0),
        u.get("outputTokens", 0),
        u.get("cacheCreationInputTokens", 0),
        u.get("cacheReadInputTokens", 0),
    )
    return Usage(*counts, total_tokens=u.get("totalTokens", sum(counts)))
