"""Context editing: old tool results and old thinking left out of what is sent, per the agent's `[context]` settings
(docs/COMPACTION.md). The stored messages never change; the plan is a pure function of them, so a turn and the
inspector edit alike.

A cleared tool result keeps its block (the `tool_use` it answers keeps its `tool_result`: pairing is never broken) and
its `is_error`; only its content becomes a placeholder saying what was there. Cleared thinking is dropped from an old
reply; the replies of a tool loop still running keep theirs (the API wants the reply that called the tools intact).
Both move in batches (`clear_batch`), so the prompt cache is rebuilt once per batch, not with every request.

Done here rather than with the API's own context management (`clear_tool_uses_20250919`, `clear_thinking_20251015`):
those edit on Anthropic's side, after the request has left, so the inspector could no longer show what the model
reads, only a count afterwards; edited here, what is shown is what is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .context_config import ContextConfig
from .tokens import compact_json

THINKING = ("thinking", "redacted_thinking")


class Stored(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def content(self) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class EditPlan:
    """What to leave out: the results of these tool uses, the thinking of these messages."""

    tool_uses: frozenset[str] = frozenset()
    thinking: frozenset[str] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.tool_uses or self.thinking)


@dataclass(frozen=True, slots=True)
class Edit:
    """One block the request does not carry as stored: `replacement` is what it carries instead (None: nothing)."""

    kind: str  # "tool_result" | "thinking"
    message_id: str
    original: dict[str, Any]
    replacement: dict[str, Any] | None
    name: str | None = None  # the tool, for a tool result
    tool_use_id: str | None = None


@dataclass(slots=True)
class Edits:
    """Edits made while assembling, in order."""

    made: list[Edit] = field(default_factory=list)


def _batched(count: int, keep: int, batch: int) -> int:
    """How many of `count` oldest items to clear: all but `keep`, rounded down to whole batches."""
    surplus = max(0, count - keep)
    return surplus - surplus % batch


def plan_edits(visible: Sequence[Stored], config: ContextConfig, *, pending: bool) -> EditPlan:
    """Which of the messages to be sent lose what. `pending`: a new user message follows them (a turn starts), so
    no reply among them belongs to a tool loop still running."""
    if not (config.clear_tool_results or config.clear_thinking):
        return EditPlan()
    last_assistant = max((i for i, m in enumerate(visible) if m.role == "assistant"), default=-1)
    tool_uses: list[str] = []
    if config.clear_tool_results:
        # The newest reply's calls are never cleared: their results may not have reached the model yet.
        for message in visible[:last_assistant]:
            if message.role == "assistant":
                tool_uses += [b["id"] for b in message.content if b.get("type") == "tool_use" and "id" in b]
    thinking: list[str] = []
    if config.clear_thinking:
        running = len(visible) if pending else _loop_start(visible)
        thinking = [
            m.id
            for m in visible[:running]
            if m.role == "assistant" and any(b.get("type") in THINKING for b in m.content)
        ]
    cleared_uses = _batched(len(tool_uses), config.keep_tool_uses, config.clear_batch)
    cleared_thinking = _batched(len(thinking), config.keep_thinking_turns, config.clear_batch)
    return EditPlan(frozenset(tool_uses[:cleared_uses]), frozenset(thinking[:cleared_thinking]))


def _loop_start(visible: Sequence[Stored]) -> int:
    """Where the turn still running began: its user message (the last one that is not tool results)."""
    for i in range(len(visible) - 1, -1, -1):
        message = visible[i]
        if message.role == "user" and not any(b.get("type") == "tool_result" for b in message.content):
            return i
    return 0


def placeholder(name: str | None, original: dict[str, Any]) -> dict[str, Any]:
    content = original.get("content")
    size = len(content) if isinstance(content, str) else len(compact_json(content or ""))
    what = f"this {name} result" if name else "this tool result"
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": original.get("tool_use_id"),
        "content": f"[Cleared by the gateway to save context: {what} ({size:,} characters) was read earlier and is "
        "no longer sent. Call the tool again if you need it.]",
    }
    if original.get("is_error"):
        block["is_error"] = True
    return block


def edit_blocks(
    message: Stored, blocks: list[dict[str, Any]], plan: EditPlan, names: dict[str, str], edits: Edits
) -> list[dict[str, Any]]:
    """`blocks` (the message's replayable blocks) as the plan sends them; the same list when nothing changes."""
    if not plan:
        return blocks
    strip = message.id in plan.thinking
    changed = False
    out: list[dict[str, Any]] = []
    for block in blocks:
        kind = block.get("type")
        if strip and kind in THINKING:
            edits.made.append(Edit("thinking", message.id, block, None))
            changed = True
            continue
        if kind == "tool_result" and block.get("tool_use_id") in plan.tool_uses:
            name = names.get(block["tool_use_id"])
            replacement = placeholder(name, block)
            edits.made.append(Edit("tool_result", message.id, block, replacement, name, block["tool_use_id"]))
            out.append(replacement)
            changed = True
            continue
        out.append(block)
    return out if changed else blocks


def tool_names(visible: Sequence[Stored]) -> dict[str, str]:
    """tool_use id -> tool name, for the placeholders."""
    return {
        b["id"]: str(b.get("name", ""))
        for m in visible
        if m.role == "assistant"
        for b in m.content
        if b.get("type") == "tool_use" and "id" in b
    }
