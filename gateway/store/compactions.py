"""A compaction's one write: the summary message, the older messages marked with it, the session bumped, and the
summarisation request's usage row, together or not at all. Nothing is written before it, so a compaction that fails,
is cancelled or dies with its process leaves the session exactly as it was (docs/COMPACTION.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import StreamInProgress

from . import chat_sql as sql
from .base import Database
from .chats import ChatStore
from .models import Message
from .upserts import add_calibration, save_usage
from .usage_row import UsageRow

M = sql.MESSAGES
_LAST_SEQ = select(func.max(M.c.seq)).where(M.c.session_id == bindparam("session_id"))
_MARK = (
    update(M)
    .where(
        M.c.session_id == bindparam("in_session"),
        M.c.id.in_(bindparam("ids", expanding=True)),
        M.c.compacted_by.is_(None),
        M.c.status != "streaming",
    )
    .values(compacted_by=bindparam("summary"))
)
_THROUGH = select(func.max(M.c.seq)).where(M.c.compacted_by == bindparam("summary_id"))
_BUMP = (
    update(sql.SESSIONS)
    .where(sql.SESSIONS.c.id == bindparam("session_id"))
    .values(message_count=sql.SESSIONS.c.message_count + 1, updated_at=bindparam("now"))
)
# Statements stay far below every database's limit on bound parameters.
_CHUNK = 500


class CompactionConflict(StreamInProgress):
    """The messages to compact changed while the summary was written (another process wrote to the session): nothing
    was written; compact again."""


@dataclass(frozen=True, slots=True)
class Compacted:
    summary: Message  # as stored
    compacted: int  # messages newly marked with it
    through_seq: int  # the newest of them


class CompactionStore:
    def __init__(self, database: Database, chats: ChatStore, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = database
        self._chats = chats
        self._clock = clock

    async def apply(
        self,
        *,
        session_id: str,
        summary: dict[str, Any],
        compacted_ids: Sequence[str],
        usage: UsageRow | None,
        calibration: tuple[str, int, int] | None = None,
    ) -> Compacted:
        """`summary`: the summary message's id, content, text, model and stop_reason. It is stored after every other
        message of the session; `compacted_ids` are marked with it."""
        now = self._clock.now()
        ids = list(compacted_ids)

        def work(conn: Connection) -> tuple[Message, int, int]:
            last = conn.execute(_LAST_SEQ, {"session_id": session_id}).scalar()
            row = {
                "session_id": session_id,
                "seq": 0 if last is None else last + 1,
                "role": "assistant",
                "status": "complete",
                "error_code": None,
                "idempotency_key": None,
                "kind": "summary",
                "compacted_by": None,
                "created_at": now,
                "updated_at": now,
                **summary,
            }
            conn.execute(sql.NEW_MESSAGES, [row])
            marked = 0
            for start in range(0, len(ids), _CHUNK):
                chunk = {"in_session": session_id, "ids": ids[start : start + _CHUNK], "summary": summary["id"]}
                marked += conn.execute(_MARK, chunk).rowcount
            if marked != len(ids):
                # Rolls the transaction back: the summary is not stored and no message is marked.
                raise CompactionConflict(
                    f"session {session_id} changed while it was being compacted; nothing was changed, compact again",
                    sessionId=session_id,
                )
            conn.execute(_BUMP, {"session_id": session_id, "now": now})
            if usage is not None and save_usage(conn, usage) and calibration is not None:
                add_calibration(conn, *calibration, now=now)
            through = conn.execute(_THROUGH, {"summary_id": summary["id"]}).scalar()
            return Message(**row), marked, int(through or 0)

        try:
            message, marked, through = await self._db.run(work, write=True)
        finally:
            # This process's copy of the session no longer says which messages are sent.
            self._chats.drop_snapshot(session_id)
        if calibration is not None:
            self._chats.calibrations.added(*calibration)
        return Compacted(message, marked, through)
