"""The one context assembler: what `chat.send` sends and what `context.inspect` shows come from `assemble()`.

Sections, in order: system_prompt, memory, skills, tools, history. Each section's content is exactly the part of the
request it stands for, so the inspector's bytes and tokens are by construction those of the request.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .models import Message
from .workspace import Workspace

SECTION_NAMES = ("system_prompt", "memory", "skills", "tools", "history")
MEMORY_HEADING = "# Long-term memory"
SKILLS_HEADING = "# Skills\n\nThese skills are available; ask for one by name when it fits the task."


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    content: str | list[Any]
    item_count: int | None = None
    truncated: bool | None = None

    @property
    def wire_text(self) -> str:
        """The section as sent: text as-is, structured parts as compact JSON (the way they cross the wire)."""
        if isinstance(self.content, str):
            return self.content
        return json.dumps(self.content, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Assembled:
    params: dict[str, Any]  # exactly the keyword arguments given to messages.create
    sections: tuple[Section, ...]
    model: str
    cache_mode: str

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.params["messages"])


def _cache_marker(cache_mode: str) -> dict[str, str] | None:
    if cache_mode == "off":
        return None
    if cache_mode == "1h":
        return {"type": "ephemeral", "ttl": "1h"}
    return {"type": "ephemeral"}


def replayable_content(message: Message) -> list[dict[str, Any]]:
    """The blocks of a stored turn that the API will accept again.

    Tool calls are dropped (this gateway runs no tools, so no tool_result would follow them); an unfinished reply was
    already stored without its unsigned thinking.
    """
    return [dict(block) for block in message.content if block.get("type") not in ("tool_use", "server_tool_use")]


def history_messages(history: Sequence[Message], pending: str | None) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for message in history:
        blocks = replayable_content(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == message.role:
            # Two user turns in a row (the reply between them failed before any text): the API wants alternation.
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": message.role, "content": blocks})
    if pending is not None:
        block = {"type": "text", "text": pending}
        if turns and turns[-1]["role"] == "user":
            turns[-1]["content"].append(block)
        else:
            turns.append({"role": "user", "content": [block]})
    return turns


# The API refuses cache_control on thinking blocks and on empty text blocks; the breakpoint goes on the last block
# that may carry one (the prefix before it is cached all the same).
_UNMARKABLE = ("thinking", "redacted_thinking")


def _markable(block: dict[str, Any]) -> bool:
    if block.get("type") in _UNMARKABLE:
        return False
    return not (block.get("type") == "text" and not block.get("text"))


def _mark_prefix(turns: list[dict[str, Any]], marker: dict[str, str]) -> None:
    """Cache breakpoint on the last block before the newest user turn: the stable history prefix."""
    for turn in reversed(turns[:-1]):
        blocks = turn["content"]
        for i in range(len(blocks) - 1, -1, -1):
            if _markable(blocks[i]):
                blocks[i] = {**blocks[i], "cache_control": marker}
                return


def assemble(
    workspace: Workspace,
    history: Sequence[Message],
    *,
    pending: str | None,
    model: str,
    max_tokens: int,
) -> Assembled:
    marker = _cache_marker(workspace.cache_mode)
    system: list[dict[str, Any]] = [{"type": "text", "text": workspace.system_prompt}]
    memory_text = f"{MEMORY_HEADING}\n\n{workspace.memory}" if workspace.memory else ""
    if memory_text:
        system.append({"type": "text", "text": memory_text})
    skills_text = ""
    if workspace.skills:
        lines = [f"- {skill.name}: {skill.description}".rstrip(": ") for skill in workspace.skills]
        skills_text = SKILLS_HEADING + "\n\n" + "\n".join(lines)
        system.append({"type": "text", "text": skills_text})
    if marker is not None:
        # Tools come before system in the prompt, so one breakpoint here caches tools and system together.
        system[-1] = {**system[-1], "cache_control": marker}

    turns = history_messages(history, pending)
    if marker is not None:
        _mark_prefix(turns, marker)
    tools = [dict(tool) for tool in workspace.tools]

    params: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "system": system, "messages": turns}
    if tools:
        params["tools"] = tools
    sections = (
        Section("system_prompt", workspace.system_prompt, truncated=workspace.system_truncated),
        Section("memory", memory_text, truncated=workspace.memory_truncated),
        Section("skills", skills_text, item_count=len(workspace.skills), truncated=workspace.skills_truncated),
        Section("tools", tools, item_count=len(tools), truncated=workspace.tools_truncated),
        Section("history", turns, item_count=len(turns)),
    )
    return Assembled(params=params, sections=sections, model=model, cache_mode=workspace.cache_mode)
