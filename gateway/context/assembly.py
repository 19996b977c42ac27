"""The one context assembler: what `chat.send` sends and what `context.inspect` shows come from `assemble()`.

Sections, in order: system_prompt, memory, skills, tools, summary, history. Each section's content is exactly the part
of the request it stands for, so the inspector's bytes and tokens are by construction those of the request: `summary`
and `history` are the `messages` array in two parts (the summary of a compacted session's older part, then the turns
after it; docs/COMPACTION.md).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .assembly_cache import Prefix, TurnCache
from .compaction import split_history, summary_turns
from .editing import Edit, EditPlan, Edits, edit_blocks, plan_edits, tool_names
from .pairing import pair_tool_blocks
from .workspace import Workspace

SECTION_NAMES = ("system_prompt", "memory", "skills", "tools", "summary", "history")
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

    @property
    def kind(self) -> str: ...
    @property
    def compacted_by(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Section:
    name: str
    content: str | list[Any]
    item_count: int | None = None
    truncated: bool | None = None
    # History only: per turn, an identity that changes whenever the turn's JSON does (its messages' ids and
    # versions, its cache marker), or None for the turn holding the draft. Measurements are cached under it.
    item_keys: tuple[Hashable | None, ...] = ()
    # Summary and history: the bytes of the `messages` array's brackets and commas this part counts, so the two
    # parts' byte counts add up to the array's exactly. None: a list of its own ("[", "]" and its commas).
    array_bytes: int | None = None
    details: tuple[tuple[str, Any], ...] = ()  # more fields for the inspector (the summary's message id, ...)
    # History only: its first turns as kept from the session's earlier requests (assembly_cache.py), whose sizes
    # and JSON are known already.
    prefix: Prefix | None = None


@dataclass(frozen=True, slots=True)
class Assembled:
    params: dict[str, Any]  # exactly the keyword arguments given to messages.create
    sections: tuple[Section, ...]
    model: str
    cache_mode: str
    edits: tuple[Edit, ...] = ()  # what context editing left out (editing.py)

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
    history: Sequence[StoredMessage], pending: str | None, plan: EditPlan | None = None, edits: Edits | None = None
) -> tuple[list[dict[str, Any]], list[tuple[Hashable, ...] | None]]:
    """The turns to send, and for each the versions of the messages in it (None if it holds the draft). `history`:
    the messages after any summary; `plan`: what context editing leaves out (its edits are added to `edits`)."""
    turns: list[dict[str, Any]] = []
    keys: list[tuple[Hashable, ...] | None] = []
    names = tool_names(history) if plan else {}
    for message in history:
        replayable = replayable_content(message)
        blocks = edit_blocks(message, replayable, plan, names, edits or Edits()) if plan else replayable
        if not blocks:
            continue
        version: tuple[Hashable, ...] = (message.id, message.version)
        if plan and blocks is not replayable:
            # The same message edited is different JSON: measured under another key, which says how it was edited.
            cleared = tuple(b["tool_use_id"] for b in replayable if b.get("tool_use_id") in plan.tool_uses)
            version = (*version, ("edited", message.id in plan.thinking, cleared))
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


def _unedited(
    history: Sequence[StoredMessage], pending: str | None
) -> tuple[list[dict[str, Any]], list[tuple[Hashable, ...] | None]]:
    return history_messages(history, pending)


# The API refuses cache_control on thinking blocks and on empty text blocks; the breakpoint goes on the last block
# that may carry one (the prefix before it is cached all the same).
_UNMARKABLE = ("thinking", "redacted_thinking")


def _markable(block: dict[str, Any]) -> bool:
    if block.get("type") in _UNMARKABLE:
        return False
    return not (block.get("type") == "text" and not block.get("text"))


def _mark_prefix(
    turns: list[dict[str, Any]], keys: list[tuple[Hashable, ...] | None], marker: dict[str, str]
) -> int | None:
    """Cache breakpoint on the last block before the newest user turn: the stable history prefix. Returns the index
    of the turn it went on. The turn is copied, not changed: turns may be kept for the session's next request."""
    for index in range(len(turns) - 2, -1, -1):
        blocks = turns[index]["content"]
        for i in range(len(blocks) - 1, -1, -1):
            if _markable(blocks[i]):
                marked = [*blocks[:i], {**blocks[i], "cache_control": marker}, *blocks[i + 1 :]]
                turns[index] = {**turns[index], "content": marked}
                key = keys[index]
                if key is not None:
                    # The same turn with a marker is different JSON, so it is measured under another key.
                    keys[index] = (*key, ("cache_control", i, *marker.items()))
                return index
    return None


def _summary_part(
    summary: StoredMessage | None, marker: dict[str, str] | None, compacted: int
) -> tuple[list[dict[str, Any]], tuple[Hashable, ...], tuple[tuple[str, Any], ...]]:
    """The summary's turns, their measurement keys and the inspector's details of it."""
    if summary is None:
        return [], (), ()
    turns = summary_turns(summary)
    keys: list[Hashable] = [("summary-preamble", turns[0]["content"][0]["text"]), (summary.id, summary.version)]
    if marker is not None:
        # Its own breakpoint: tools, system and summary are one cached prefix, written once after a compaction and
        # read by every later request, however many blocks the turns after it add.
        blocks = turns[1]["content"]
        blocks[-1]["cache_control"] = marker
        keys[1] = (summary.id, summary.version, ("cache_control", *marker.items()))
    return turns, tuple(keys), (("messageId", summary.id), ("compactedMessages", compacted))


def assemble(
    workspace: Workspace,
    history: Sequence[StoredMessage],
    *,
    pending: str | None,
    model: str,
    max_tokens: int,
    tools: Sequence[dict[str, Any]] | None = None,
    edit_plan: EditPlan | None = None,
    cache: TurnCache | None = None,
) -> Assembled:
    """The request. `tools`: the definitions to send (a turn's toolbox: built-ins, tools.json, MCP and the client's
    own); None sends the workspace's tools.json as it is. `edit_plan`: what context editing leaves out; None plans it
    from `history` and the agent's settings. `cache`: where a session's turns are kept between its requests (a
    request without context editing then assembles only what is new)."""
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

    edits = Edits()
    prefix: Prefix | None = None
    config = workspace.context
    editing = config.clear_tool_results or config.clear_thinking if edit_plan is None else bool(edit_plan)
    if cache is not None and not editing:
        kept = cache.history_turns(history, pending, _unedited)
        summary, compacted, turns, keys, prefix = kept.summary, kept.compacted, kept.turns, kept.keys, kept.prefix
    else:
        summary, visible = split_history(history)
        if edit_plan is None:
            edit_plan = plan_edits(visible, config, pending=pending is not None)
        turns, keys = history_messages(visible, pending, edit_plan, edits)
        compacted = sum(1 for message in history if message.compacted_by is not None)
    if marker is not None:
        marked = _mark_prefix(turns, keys, marker)
        if prefix is not None and marked is not None and marked < prefix.turns:
            prefix = None  # the marker fell inside the kept turns (a reply that failed): not the kept JSON there
    head, head_keys, details = _summary_part(summary, marker, compacted)
    tools = [dict(tool) for tool in (workspace.tools if tools is None else tools)]

    params: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "system": system, "messages": head + turns}
    if tools:
        params["tools"] = tools
    # With a summary, `messages` is its turns then the history's: the summary counts "[" and a comma after each of
    # its turns, the history its commas and "]".
    sections = (
        Section("system_prompt", workspace.system_prompt, truncated=workspace.system_truncated),
        Section("memory", memory_text, truncated=workspace.memory_truncated),
        Section("skills", skills_text, item_count=len(workspace.skills), truncated=workspace.skills_truncated),
        Section("tools", tools, item_count=len(tools), truncated=workspace.tools_truncated),
        Section(
            "summary",
            head,
            len(head),
            item_keys=head_keys,
            array_bytes=len(head) + 1 if head else None,
            details=details,
        ),
        Section(
            "history",
            turns,
            len(turns),
            item_keys=tuple(keys),
            array_bytes=len(turns) if head else None,
            prefix=prefix,
        ),
    )
    return Assembled(params, sections, model, workspace.cache_mode, tuple(edits.made))
