"""What this process last wrote to a session, so its next send can skip reading the session and history back.

A send into an existing session used to start with a trip to the database for the session row and its history,
the largest part of the time the gateway adds before the first token (issue 7: 0.65 ms of +3 ms at 1 client; a
network round trip on PostgreSQL). The turn that wrote them knows them already. The snapshot is only a guess: the
next turn's `begin_turn` checks, in the same transaction that writes the user message, that the session's message
count is still the one the snapshot was taken at. Every turn written by anyone bumps that count, so a turn another
process streamed into the session meanwhile (clients behind a load balancer) makes the check fail: the transaction
rolls back, nothing is written, and the turn starts again from a fresh read.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from .history import HistoryItem, version_at
from .models import ChatSession, Message

# Bounded by the characters of text held (the history loader's cache has the same bound; contents read from the
# database are the same objects in both). A full table only means more reads, never a wrong answer.
MAX_CHARS = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Snapshot:
    session: ChatSession  # as of the last begin_turn: its message_count is what the next one must find
    history: list[HistoryItem]  # every message, the last reply included, as a read would return them
    chars: int  # the text in `history`, roughly (what the bound counts)


class StaleSnapshot(Exception):
    """begin_turn found the session changed since the snapshot: it wrote nothing; read afresh and try again."""


def _chars(item: HistoryItem) -> int:
    # Text and thinking are nearly all of a message; tool inputs and signatures count as a little overhead.
    return 64 + sum(len(block.get("text") or block.get("thinking") or "") for block in item.content)


class Snapshots:
    def __init__(self, max_chars: int = MAX_CHARS) -> None:
        self._max = max_chars
        self._held = 0
        self._snapshots: OrderedDict[str, Snapshot] = OrderedDict()
        # Between begin_turn and finish_turn: the session, its history up to the user message and that history's
        # size, by reply id.
        self._pending: dict[str, tuple[ChatSession, list[HistoryItem], int]] = {}

    def get(self, session_id: str) -> Snapshot | None:
        found = self._snapshots.get(session_id)
        if found is not None:
            self._snapshots.move_to_end(session_id)
        return found

    def begun(self, reply_id: str, session: ChatSession, history: list[HistoryItem], user: HistoryItem) -> None:
        """A turn was written after assembling from `history` (a snapshot's, or a fresh read's)."""
        known = self._snapshots.get(session.id)
        # From a snapshot, its size carries over; a fresh read is sized once, as its own read was a pass over it.
        chars = known.chars if known is not None and known.history is history else sum(map(_chars, history))
        self.drop(session.id)  # until the reply is saved, only a read knows the session's state
        self._pending[reply_id] = (session, [*history, user], chars + _chars(user))

    def written(self, reply_id: str, session: ChatSession, history: list[HistoryItem] | None, user: Message) -> None:
        """begin_turn wrote `user` and the reply `reply_id` (even if its caller was cancelled meanwhile)."""
        if history is not None:
            as_read = HistoryItem(user.id, "user", user.content, version_at(user.updated_at), user.status)
            self.begun(reply_id, session, history, as_read)

    def finished(self, reply: HistoryItem) -> None:
        """The reply was saved; `reply` is as a read would return it. (A failed save calls `abandon` instead.)"""
        pending = self._pending.pop(reply.id, None)
        if pending is None:
            return
        session, history, chars = pending
        self._put(Snapshot(session, [*history, reply], chars + _chars(reply)))

    def abandon(self, reply_id: str) -> None:
        self._pending.pop(reply_id, None)

    def clear(self) -> None:
        self._snapshots.clear()
        self._held = 0

    def drop(self, session_id: str) -> None:
        dropped = self._snapshots.pop(session_id, None)
        if dropped is not None:
            self._held -= dropped.chars

    def _put(self, snapshot: Snapshot) -> None:
        self.drop(snapshot.session.id)
        if snapshot.chars > self._max:
            return
        self._snapshots[snapshot.session.id] = snapshot
        self._held += snapshot.chars
        while self._held > self._max:
            _, oldest = self._snapshots.popitem(last=False)
            self._held -= oldest.chars
