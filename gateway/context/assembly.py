"""The one context assembler: what `chat.send` sends and what `context.inspect` shows come from `assemble()`.

Sections, in order: system_prompt, memory, skills, tools, history. Each section's content is exactly the part of the
request it stands for, so the inspector's bytes and tokens are by construction those of the request.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .pairing import pair_tool_blocks
from .workspace import Workspace

SECTION_NAMES = ("system_prompt", "memory", "skills", "tools", "history")
MEMORY_HEADING = "# Long-term memory"
SKILLS_HEADING = "# Skills\n\nThese skills are available; ask for one by name when it fits the task."


class StoredMessage(Protocol):
    """What assembly needs of a stored message (the store's `HistoryItem`)."""

    @property
    def id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def content(self) -> list[dict[str, Any]]: ...
    @property
    def version(self) -> str:
        """Changes whenever the message does."""
        ...


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    content: str | list[Any]
    item_count: int | None = None
    truncated: bool | None = None
    # History only: per turn, an identity that changes whenever the turn's JSON does (its messages' ids and
    # versions, its cache marker), or None for the turn holding the draft. Measurements are cached under it.
    item_keys: tuple[Hashable | None, ...] = ()


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


def replayable_content(message: StoredMessage) -> list[dict[str, Any]]:
    """The blocks of a stored turn that the API will accept again: all of them (tool calls and results included;
    `pair_tool_blocks` checks their pairing), but empty text. An unfinished reply was already stored without its
    unsigned thinking. Blocks are shared, not copied: assembly never changes one in place."""
    return [block for block in message.content if not (block.get("type") == "text" and not block.get("text"))]


def history_messages(
    history: Sequence[StoredMessage], pending: str | None
) -> tuple[list[dict[str, Any]], list[tuple[Hashable, ...] | None]]:
    """The turns to send, and for each the versions of the messages in it (None if it holds the draft)."""
    turns: list[dict[str, Any]] = []
    keys: list[tuple[Hashable, ...] | None] = []
    for message in history:
        blocks = replayable_content(message)
        if not blocks:
            continue
        version = (message.id, message.version)
        if turns and turns[-1]["role"] == message.role:
            # Two user turns in a row (the reply between them failed before any text): the API wants alternation.
            turns[-1]["content"].extend(blocks)
            keys[-1] = (*(keys[-1] or ()), version)
        else:
            turns.append({"role": message.role, "content": blocks})
            keys.append((version,))
    if pending is not None:
        block = {"type": "text", "text": pending}
        if turns and turns[-1]["role"] == "user":
            turns[-1]["content"].append(block)
            keys[-1] = None
        else:
            turns.append({"role": "user", "content": [block]})
            keys.append(None)
    pair_tool_blocks(turns, keys)
    return turns, keys


# The API refuses cache_control on thinking blocks and on empty text blocks; the breakpoint goes on the last block
# that may carry one (the prefix before it is cached all the same).
_UNMARKABLE = ("thinking", "redacted_thinking")


def _markable(block: dict[str, Any]) -> bool:
    if block.get("type") in _UNMARKABLE:
        return False
    return not (block.get("type") == "text" and not block.get("text"))


def _mark_prefix(turns: list[dict[str, Any]], keys: list[tuple[Hashable, ...] | None], marker: dict[str, str]) -> None:
    """Cache breakpoint on the last block before the newest user turn: the stable history prefix."""
    for index in range(len(turns) - 2, -1, -1):
        blocks = turns[index]["content"]
        for i in range(len(blocks) - 1, -1, -1):
            if _markable(blocks[i]):
                blocks[i] = {**blocks[i], "cache_control": marker}
                key = keys[index]
                if key is not None:
                    # The same turn with a marker is different JSON, so it is measured under another key.
                    keys[index] = (*key, ("cache_control", i, *marker.items()))
                return


def assemble(
    workspace: Workspace,
    history: Sequence[StoredMessage],
    *,
    pending: str | None,
    model: str,
    max_tokens: int,
    tools: Sequence[dict[str, Any]] | None = None,
) -> Assembled:
    """The request. `tools`: the definitions to send (a turn's toolbox: built-ins, tools.json, MCP and the client's
    own); None sends the workspace's tools.json as it is."""
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

    turns, keys = history_messages(history, pending)
    if marker is not None:
        _mark_prefix(turns, keys, marker)
    tools = [dict(tool) for tool in (workspace.tools if tools is None else tools)]

    params: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "system": system, "messages": turns}
    if tools:
        params["tools"] = tools
    sections = (
        Section("system_prompt", workspace.system_prompt, truncated=workspace.system_truncated),
        Section("memory", memory_text, truncated=workspace.memory_truncated),
        Section("skills", skills_text, item_count=len(workspace.skills), truncated=workspace.skills_truncated),
        Section("tools", tools, item_count=len(tools), truncated=workspace.tools_truncated),
        Section("history", turns, item_count=len(turns), item_keys=tuple(keys)),
    )
    return Assembled(params=params, sections=sections, model=model, cache_mode=workspace.cache_mode)
