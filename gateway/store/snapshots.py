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

from ..models import ChatSession
from .history import HistoryItem

# Bounded by messages held (their contents are mostly shared with the history loader's cache anyway).
MAX_MESSAGES = 50_000


@dataclass(frozen=True, slots=True)
class Snapshot:
    session: ChatSession  # as of the last begin_turn: its message_count is what the next one must find
    history: list[HistoryItem]  # every message, the last reply included, as a read would return them


class StaleSnapshot(Exception):
    """begin_turn found the session changed since the snapshot: it wrote nothing; read afresh and try again."""


class Snapshots:
    def __init__(self, max_messages: int = MAX_MESSAGES) -> None:
        self._max = max_messages
        self._held = 0
        self._snapshots: OrderedDict[str, Snapshot] = OrderedDict()
        # Between begin_turn and finish_turn: the session and its history up to the user message, by reply id.
        self._pending: dict[str, tuple[ChatSession, list[HistoryItem]]] = {}

    def get(self, session_id: str) -> Snapshot | None:
        found = self._snapshots.get(session_id)
        if found is not None:
            self._snapshots.move_to_end(session_id)
        return found

    def begun(self, reply_id: str, session: ChatSession, history: list[HistoryItem]) -> None:
        self.drop(session.id)  # until the reply is saved, only a read knows the session's state
        self._pending[reply_id] = (session, history)

    def finished(self, reply: HistoryItem | None) -> None:
        """The reply was saved (`reply`: as a read would return it), or its save failed (None: forget the turn)."""
        if reply is None:
            return
        pending = self._pending.pop(reply.id, None)
        if pending is None:
            return
        session, history = pending
        self._put(Snapshot(session, [*history, reply]))

    def abandon(self, reply_id: str) -> None:
        self._pending.pop(reply_id, None)

    def clear(self) -> None:
        self._snapshots.clear()
        self._held = 0

    def drop(self, session_id: str) -> None:
        dropped = self._snapshots.pop(session_id, None)
        if dropped is not None:
            self._held -= len(dropped.history)

    def _put(self, snapshot: Snapshot) -> None:
        self.drop(snapshot.session.id)
        if len(snapshot.history) > self._max:
            return
        self._snapshots[snapshot.session.id] = snapshot
        self._held += len(snapshot.history)
        while self._held > self._max:
            _, oldest = self._snapshots.popitem(last=False)
            self._held -= len(oldest.history)
