"""What compaction changes in what is sent, as pure functions of the stored messages (docs/COMPACTION.md).

A compacted session's history is: the messages marked `compacted_by` (stored, shown in `session.history`, never
sent), one summary (`kind = 'summary'`: the model's own words, a reply to the summarisation request) and the messages
after the cut. What is sent is the summary, as two turns (a gateway note in the user's turn that the conversation was
compacted, then the summary in the assistant's turn, which is where the model wrote it), followed by the messages
after the cut. The cut always falls before a user message that starts a turn, so a `tool_use` and its `tool_result`
are always on the same side of it and the roles still alternate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

SUMMARY = "summary"
# The user turn before a summary. Its first words say plainly what happened, for the model and for anyone reading
# the inspector.
SUMMARY_PREAMBLE = (
    "[The conversation before this point was compacted by the gateway to fit the context window; the older messages"
    " are no longer sent. Your summary of them follows.]"
)
# The last user turn of a summarisation request. It starts with a fixed phrase that tests/fake_anthropic.py
# recognises, so the fake upstream answers it with a recognisable summary.
REQUEST_HEADING = "Compaction request:"
SUMMARY_REQUEST = (
    f"{REQUEST_HEADING} this conversation is about to be compacted, because it no longer fits the context window."
    " Write a summary that lets it continue without the messages above: the user's goals and requests, what was"
    " decided and done, facts, names, numbers and file paths that matter, what the tools returned that is still"
    " needed, and what is still open. Write it as your own notes, in the language of the conversation. Answer with the"
    " summary only, and do not call tools."
)


class Stored(Protocol):
    """What compaction needs of a stored message (the store's `HistoryItem`)."""

    @property
    def id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def content(self) -> list[dict[str, Any]]: ...
    @property
    def kind(self) -> str: ...
    @property
    def compacted_by(self) -> str | None: ...


M = TypeVar("M", bound="Stored")


def split_history(history: Sequence[M]) -> tuple[M | None, list[M]]:
    """The summary in force (the newest one not itself compacted) and the messages sent after it."""
    summary: M | None = None
    visible: list[M] = []
    for message in history:
        if message.compacted_by is not None:
            continue
        if message.kind == SUMMARY:
            summary = message
        else:
            visible.append(message)
    return summary, visible


def starts_turn(message: Stored) -> bool:
    """A user message that begins a turn: what a `chat.send` stores, not the tool results of a tool loop."""
    return message.role == "user" and not any(block.get("type") == "tool_result" for block in message.content)


@dataclass(frozen=True, slots=True)
class Cut(Generic[M]):
    """One compaction: `older` is summarised (the summary in force first, when there is one) and marked compacted;
    `kept` is sent after the new summary."""

    older: list[M]
    kept: list[M]

    @property
    def compacted_ids(self) -> list[str]:
        return [message.id for message in self.older]

    @property
    def kept_turns(self) -> int:
        return sum(1 for message in self.kept if starts_turn(message))


def cuts(history: Sequence[M], keep_turns: int) -> list[Cut[M]]:
    """Every possible cut that keeps at least `keep_turns` turns, the one keeping exactly that many first, then each
    keeping one turn more; [] when nothing would be summarised (no message before the kept turns, or only the
    summary in force)."""
    summary, visible = split_history(history)
    starts = [i for i, message in enumerate(visible) if starts_turn(message)]
    # Cutting at the end keeps no turn; cutting at a turn's start keeps it and every later one.
    points = [*starts, len(visible)]
    first = len(points) - 1 - keep_turns
    found: list[Cut[M]] = []
    for index in range(first, -1, -1):
        point = points[index]
        older = visible[:point]
        if not older:
            break
        found.append(Cut([summary, *older] if summary is not None else older, visible[point:]))
    return found


def summary_request(instructions: str = "") -> str:
    """The user turn that asks for the summary; `instructions` (the agent's or the client's) are added to it."""
    if not instructions.strip():
        return SUMMARY_REQUEST
    return f"{SUMMARY_REQUEST}\n\nAlso: {instructions.strip()}"


def summary_content(text: str) -> list[dict[str, Any]]:
    """The stored content of a summary message: the text the model wrote, as one block."""
    return [{"type": "text", "text": text}]


def summary_turns(summary: Stored) -> list[dict[str, Any]]:
    """The two turns a summary is sent as. Blocks are new dicts: the cache marker goes on the last one in place."""
    blocks = [dict(block) for block in summary.content if block.get("type") == "text" and block.get("text")]
    if not blocks:
        blocks = [{"type": "text", "text": "(empty summary)"}]
    return [
        {"role": "user", "content": [{"type": "text", "text": SUMMARY_PREAMBLE}]},
        {"role": "assistant", "content": blocks},
    ]
