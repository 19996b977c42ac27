"""Browsing sessions and their messages, as `session.list` and `session.history` page through them: newest sessions
first behind an opaque cursor, and a session's messages oldest first, newest page last."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, tuple_

from gateway.errors import InvalidMessage

from .base import Database
from .models import ChatSession, Message


@dataclass(frozen=True, slots=True)
class SessionPage:
    sessions: list[ChatSession]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    messages: list[Message]
    has_more: bool


def _encode_cursor(session: ChatSession) -> str:
    raw = f"{session.updated_at.isoformat()}|{session.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, session_id = base64.urlsafe_b64decode(padded).decode().split("|", 1)
        return datetime.fromisoformat(stamp), session_id
    except (ValueError, UnicodeDecodeError):
        raise InvalidMessage("field 'cursor' is not a cursor this gateway gave out", field="cursor") from None


class SessionStore:
    def __init__(self, database: Database) -> None:
        self._db = database

    async def list_sessions(self, agent_id: str | None, limit: int, cursor: str | None) -> SessionPage:
        query = select(ChatSession).order_by(ChatSession.updated_at.desc(), ChatSession.id.desc()).limit(limit + 1)
        if agent_id is not None:
            query = query.where(ChatSession.agent_id == agent_id)
        if cursor is not None:
            stamp, last_id = _decode_cursor(cursor)
            query = query.where(tuple_(ChatSession.updated_at, ChatSession.id) < tuple_(stamp, last_id))
        async with self._db.read() as db:
            rows = list(await db.scalars(query))
        more = len(rows) > limit
        rows = rows[:limit]
        return SessionPage(rows, _encode_cursor(rows[-1]) if more and rows else None)

    async def history(self, session_id: str, limit: int | None, before_seq: int | None) -> HistoryPage:
        """Messages in order; with a limit, the newest `limit` before `before_seq`, still oldest first."""
        query = select(Message).where(Message.session_id == session_id)
        if before_seq is not None:
            query = query.where(Message.seq < before_seq)
        if limit is None:
            async with self._db.read() as db:
                return HistoryPage(list(await db.scalars(query.order_by(Message.seq))), False)
        async with self._db.read() as db:
            rows = list(await db.scalars(query.order_by(Message.seq.desc()).limit(limit + 1)))
        more = len(rows) > limit
        return HistoryPage(list(reversed(rows[:limit])), more)
