"""A session's history turns, kept from one request to the next, so a turn assembles, counts and encodes only what
is new since the last one (issue 15: the gateway's first token grew by ~10 ms at 1,000 messages).

A session's request changes only at its end: the turns before the newest complete exchange are the same JSON on
every request (the prompt cache relies on exactly that). So `history_messages` over the messages is split at a
*boundary*: an assistant message with no tool calls followed by a user message that starts a turn. Turns before a
boundary do not depend on anything after it (no merging across it, no tool pairing across it, no last-turn rule),
so the assembly of the whole equals the assembly of the part before it followed by that of the part after it; the
part before is kept here and reused while the session's messages still start with it.

A `Prefix` is those kept turns as a unit: their token and byte counts and their JSON, each computed once and then
extended with only the turns the next boundary adds. Only assemblies without context editing are kept (the edit
plan depends on the whole history); the rest are assembled whole, as before.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .compaction import SUMMARY
from .editing import Stored as Message
from .tokens import compact_json

TOOL_USES = ("tool_use", "server_tool_use", "mcp_tool_use")
# Bounded by the text of the messages covered (the history loader's and the snapshots' bound is 16 M); a full cache
# only means whole assemblies, never a wrong one.
MAX_CHARS = 32 * 1024 * 1024
TurnKey = tuple[Hashable, ...] | None


@dataclass(eq=False, slots=True)
class Prefix:
    """The first `turns` turns of a session's history, as kept: their sizes and JSON, once known. `base`: the prefix
    this one extends, whose sums it starts from (dropped once both of this one's are known)."""

    turns: int
    base: Prefix | None = None
    measured: tuple[int, int] | None = None  # (UTF-8 bytes of the turns' JSON, tokens), brackets and commas apart
    joined: str | None = None  # the turns' compact JSON joined by commas

    def settle(self) -> None:
        if self.measured is not None and self.joined is not None:
            self.base = None


def prefix_json(prefix: Prefix, turns: Sequence[dict[str, Any]]) -> str:
    """The JSON of the prefix's turns (`turns`: the assembly's history turns, the prefix's first)."""
    if prefix.joined is None:
        base = prefix.base
        start, parts = 0, []
        if base is not None and base.joined is not None:
            start, parts = base.turns, [base.joined] if base.turns else []
        parts += [compact_json(turn) for turn in turns[start : prefix.turns]]
        prefix.joined = ",".join(parts)
        prefix.settle()
    return prefix.joined


@dataclass(slots=True)
class _Entry:
    messages: list[Any]  # the session's messages before the boundary, exactly as they were
    summary: Any  # the summary in force among them, and how many of them are compacted
    compacted: int
    turns: list[dict[str, Any]]
    keys: list[TurnKey]
    prefix: Prefix
    chars: int


@dataclass(frozen=True, slots=True)
class HistoryTurns:
    """What assembly needs of a history: the summary in force, how many messages are compacted, the turns sent after
    the summary and their keys, and the kept prefix of those turns (None: none kept)."""

    summary: Any
    compacted: int
    turns: list[dict[str, Any]]
    keys: list[TurnKey]
    prefix: Prefix | None


def _blocks(message: Message) -> list[dict[str, Any]]:
    return [b for b in message.content if not (b.get("type") == "text" and not b.get("text"))]


def _is_boundary(before: Message, after: Message) -> bool:
    """Whether the turns up to `before` are final whatever follows `after` (see the module's docstring)."""
    if before.role != "assistant" or after.role != "user":
        return False
    sent = _blocks(before)
    if not sent or any(b.get("type") in TOOL_USES for b in sent):
        return False
    opening = _blocks(after)
    return bool(opening) and not any(b.get("type") == "tool_result" for b in opening)


def _chars(messages: Sequence[Message]) -> int:
    return sum(64 + sum(len(str(b.get("text") or "")) for b in m.content) for m in messages)


def _split(history: Sequence[Any]) -> tuple[Any, int, list[int]]:
    """split_history's answer as positions: the summary in force, the count compacted, the visible messages' indexes."""
    summary, compacted, visible = None, 0, []
    for i, message in enumerate(history):
        if message.compacted_by is not None:
            compacted += 1
        elif message.kind == SUMMARY:
            summary = message
        else:
            visible.append(i)
    return summary, compacted, visible


@dataclass
class TurnCache:
    """Kept history turns by session (by the id of its first message). Used on the event loop only."""

    max_chars: int = MAX_CHARS
    _entries: OrderedDict[str, _Entry] = field(default_factory=OrderedDict)
    _chars: int = 0

    def history_turns(self, history: Sequence[Any], pending: str | None, build: Any) -> HistoryTurns:
        """`build(messages, pending) -> (turns, keys)` (assembly's history_messages, without editing) over the
        messages of `history` that are sent, reusing the turns kept for its beginning and keeping them up to its
        last boundary."""
        entry = self._entries.get(history[0].id) if history else None
        if entry is not None:
            n = len(entry.messages)
            # Identity makes this a pointer comparison per message for a session continued from a snapshot.
            fits = n < len(history) and list(history[:n]) == entry.messages
            if fits and not any(m.compacted_by is not None or m.kind == SUMMARY for m in history[n:]):
                self._entries.move_to_end(history[0].id)
                return self._extend(history, pending, build, entry, list(range(n, len(history))))
            self._drop(history[0].id)
        summary, compacted, visible = _split(history)
        return self._extend(history, pending, build, None, visible, summary, compacted)

    def _extend(
        self,
        history: Sequence[Any],
        pending: str | None,
        build: Any,
        entry: _Entry | None,
        new: list[int],
        summary: Any = None,
        compacted: int = 0,
    ) -> HistoryTurns:
        """`new`: the positions in `history` of the visible messages after the entry's (all of them without one)."""
        if entry is not None:
            summary, compacted = entry.summary, entry.compacted
        # The last boundary among the new messages (scanned from the end: usually found at once).
        cut = next((b for b in range(len(new) - 1, 0, -1) if _is_boundary(history[new[b - 1]], history[new[b]])), None)
        turns: list[dict[str, Any]] = list(entry.turns) if entry is not None else []
        keys: list[TurnKey] = list(entry.keys) if entry is not None else []
        prefix = entry.prefix if entry is not None else None
        start = 0
        if cut is not None:
            before = [history[i] for i in new[:cut]]
            middle, middle_keys = build(before, None)
            turns += middle
            keys += middle_keys
            prefix = Prefix(len(turns), base=prefix)
            messages = list(history[: new[cut]])
            # The summary and compactions among the kept messages: with an entry, those of the whole history (the
            # messages after it hold neither).
            summary_h, compacted_h = (summary, compacted) if entry is not None else _split(messages)[:2]
            chars = (entry.chars if entry is not None else 0) + _chars(before)
            kept = _Entry(messages, summary_h, compacted_h, list(turns), list(keys), prefix, chars)
            self._put(history[0].id, kept)
            start = cut
        rest, rest_keys = build([history[i] for i in new[start:]], pending)
        return HistoryTurns(summary, compacted, turns + rest, keys + rest_keys, prefix)

    def _put(self, key: str, entry: _Entry) -> None:
        self._drop(key)
        if entry.chars > self.max_chars:
            return
        self._entries[key] = entry
        self._chars += entry.chars
        while self._chars > self.max_chars:
            _, oldest = self._entries.popitem(last=False)
            self._chars -= oldest.chars

    def _drop(self, key: str) -> None:
        dropped = self._entries.pop(key, None)
        if dropped is not None:
            self._chars -= dropped.chars
