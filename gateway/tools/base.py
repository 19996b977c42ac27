"""The shapes every executor shares: a tool as offered to the model, a call's outcome, and result bounds."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

Content = str | list[dict[str, Any]]  # a tool_result's content: text, or text and image blocks
# Frames show a bounded preview of each result; the model gets the whole (capped) result.
PREVIEW_CHARS = 2000


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    content: Content
    is_error: bool = False


class ToolFailure(Exception):
    """A call that failed in a way the model should read (a bad path, a missing skill): its message becomes the
    error result. Anything else an executor raises is logged and reported to the model as an internal failure."""


Runner = Callable[[dict[str, Any]], Awaitable[ToolOutcome]]


@dataclass(frozen=True, slots=True)
class OfferedTool:
    name: str
    definition: dict[str, Any]  # exactly what is sent in the request's `tools`
    executor: str  # "builtin" | "mcp" | "client"
    policy: str  # "allow" | "ask" | "deny"
    run: Runner | None  # None: the client runs it
    # Calls whose tools share a key run one after another, in the order the model made them (memory writes).
    serial: str | None = None


@dataclass(frozen=True, slots=True)
class Toolbox:
    """One turn's tools, in the order they are sent."""

    tools: tuple[OfferedTool, ...] = ()
    problems: tuple[str, ...] = ()  # e.g. an MCP server that could not be reached; its tools are left out

    @property
    def definitions(self) -> list[dict[str, Any]]:
        return [tool.definition for tool in self.tools]

    def get(self, name: str) -> OfferedTool | None:
        return next((tool for tool in self.tools if tool.name == name), None)


def text_of(content: Content) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(str(block.get("text", "")) for block in content if block.get("type") == "text")


def capped(outcome: ToolOutcome, max_chars: int) -> ToolOutcome:
    """The outcome with its text cut to `max_chars`, saying how much was cut, so one tool cannot fill the window."""
    if isinstance(outcome.content, str):
        return ToolOutcome(_cut(outcome.content, max_chars), outcome.is_error)
    blocks: list[dict[str, Any]] = []
    left = max_chars
    for block in outcome.content:
        if block.get("type") == "text":
            text = str(block.get("text", ""))
            block = {**block, "text": _cut(text, max(left, 0))}
            left -= len(text)
        blocks.append(block)
    return ToolOutcome(blocks, outcome.is_error)


def preview(content: Content) -> tuple[str, bool]:
    """A bounded text preview of a result, for frames; and whether it was cut."""
    text = text_of(content)
    if not isinstance(content, str) and any(block.get("type") == "image" for block in content):
        text = (text + "\n[image]").strip()
    return (text, False) if len(text) <= PREVIEW_CHARS else (text[:PREVIEW_CHARS], True)


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters cut: the result is limited to {limit}]"
