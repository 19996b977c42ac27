"""The sessions stateless HTTP traffic writes (docs/HTTP_API.md): find the session a request continues by its prefix
hashes, append what is new to it (or start one), and save the reply with its usage row. The writes are the same rows a
chat.send makes, so such a session shows in session.list, session.history, the Control UI and every usage view.

Finding is one indexed lookup (`sessions.tail_hash`); writing touches only the new messages, however long the
conversation has grown.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, or_, select, update
from sqlalchemy.engine import Connection

from gateway.clock import SYSTEM_CLOCK, Clock

from . import chat_sql as sql
from .base import Database
from .chats import TurnRows, make_title, new_id
from .models import ChatSession, Message
from .sqlite_threads import CancelledAfterCommit
from .upserts import save_usage
from .usage_row import UsageRow

# Bind parameters per lookup statement: SQLite allows 32766 (999 before 3.32); a long conversation takes a few.
LOOKUP_CHUNK = 500
# Tails of the sessions this process wrote last, remembered so that the usual request (the next turn of a
# conversation this process served) finds its session without a database round trip, as a chat.send finds its
# history in a snapshot. Appending checks the tail in SQL anyway, so a stale entry costs a fork, never a wrong write.
MAX_REMEMBERED_TAILS = 10_000

_S, _M = sql.SESSIONS, sql.MESSAGES
# Appending to a session: only if its tail is still the one the request matched (another request, or a chat.send,
# may have moved it on since); learn its last seq in the same statement.
_APPEND = (
    update(_S)
    .where(_S.c.id == bindparam("session_id"))
    .where(or_(bindparam("expected", type_=_S.c.tail_hash.type).is_(None), _S.c.tail_hash == bindparam("expected")))
    .values(
        message_count=_S.c.message_count + bindparam("added"),
        updated_at=bindparam("now"),
        model=bindparam("model"),
        tail_hash=bindparam("tail"),
    )
    .returning(*_S.c, select(func.max(_M.c.seq)).where(_M.c.session_id == bindparam("session_id")).scalar_subquery())
)
_SETTLE = (
    update(_S)
    .where(_S.c.id == bindparam("session_id"))
    .values(updated_at=bindparam("now"), tail_hash=bindparam("tail"))
)


class TailMoved(Exception):
    """The session no longer ends where the request's conversation does; nothing was written."""


@dataclass(frozen=True, slots=True)
class NewMessage:
    role: str
    content: list[dict[str, Any]]
    text: str


class TranscriptStore:
    def __init__(self, database: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = database
        self._clock = clock
        self._tails: OrderedDict[str, str] = OrderedDict()  # tail hash -> session id
        self._tail_of: dict[str, str] = {}  # session id -> its tail hash

    def _remember(self, session_id: str, tail: str) -> None:
        self.forget(session_id)
        self._tails[tail] = session_id
        self._tail_of[session_id] = tail
        while len(self._tails) > MAX_REMEMBERED_TAILS:
            old_tail, old_session = self._tails.popitem(last=False)
            if self._tail_of.get(old_session) == old_tail:
                del self._tail_of[old_session]

    def forget(self, session_id: str) -> None:
        tail = self._tail_of.pop(session_id, None)
        if tail is not None and self._tails.get(tail) == session_id:
            del self._tails[tail]

    async def find_tail(self, hashes: list[str]) -> tuple[str, int] | None:
        """The session whose tail is the longest prefix of the request, and that prefix's length; None when no stored
        conversation is a prefix of it."""
        for length in range(len(hashes), 0, -1):
            remembered = self._tails.get(hashes[length - 1])
            if remembered is not None:
                return remembered, length
        index = {h: i for i, h in enumerate(hashes, start=1)}

        def work(conn: Connection) -> list[tuple[str, str]]:
            found: list[tuple[str, str]] = []
            for start in range(0, len(hashes), LOOKUP_CHUNK):
                chunk = hashes[start : start + LOOKUP_CHUNK]
                query = select(_S.c.id, _S.c.tail_hash).where(_S.c.tail_hash.in_(chunk)).order_by(_S.c.updated_at)
                found.extend((row.id, row.tail_hash) for row in conn.execute(query))
            return found

        found = await self._db.run(work)
        if not found:
            return None
        # The longest match; among sessions ending alike (identical one-shot requests), the latest.
        session_id, tail = max(found, key=lambda row: index[row[1]])
        return session_id, index[tail]

    async def begin(
        self,
        *,
        session_id: str,
        create: bool,
        expected_tail: str | None,
        agent_id: str,
        model: str,
        new: list[NewMessage],
        tail: str,
        key_id: str | None,
    ) -> TurnRows:
        """One transaction, before anything goes upstream: the session (created, or appended to if its tail is still
        `expected_tail`), the request's new messages, and an empty `streaming` reply; the session's tail becomes
        `tail`, the conversation without a reply, which is what its client resends if this one fails. Raises
        TailMoved (writing nothing) when the session moved on."""
        now = self._clock.now()

        def work(conn: Connection) -> TurnRows:
            if create:
                first_user = next((m.text for m in new if m.role == "user" and m.text), "")
                fields = {
                    "id": session_id,
                    "agent_id": agent_id,
                    "title": make_title(first_user),
                    "model": model,
                    "message_count": len(new) + 1,
                    "created_at": now,
                    "updated_at": now,
                    "tail_hash": tail,
                }
                conn.execute(sql.NEW_SESSION, fields)
                session, next_seq = ChatSession(**fields), 0
            else:
                params = {"session_id": session_id, "expected": expected_tail, "added": len(new) + 1}
                row = conn.execute(_APPEND, {**params, "now": now, "model": model, "tail": tail}).first()
                if row is None:
                    raise TailMoved(session_id)
                *columns, last_seq = row
                session = ChatSession(**dict(zip(_S.c.keys(), columns, strict=True)))
                next_seq = 0 if last_seq is None else last_seq + 1
            rows: list[dict[str, Any]] = []
            for offset, message in enumerate(new):
                rows.append(_message(session_id, next_seq + offset, message.role, message.content, message.text, now))
                rows[-1]["model"] = model if message.role == "assistant" else None
            reply = _message(session_id, next_seq + len(new), "assistant", [], "", now)
            reply.update(model=model, status="streaming")
            conn.execute(sql.NEW_MESSAGES, [*rows, reply])
            last = Message(**(rows[-1] if rows else reply))  # a retried request may add nothing but its reply
            return TurnRows(session, last, Message(**reply), create, key_id)

        try:
            rows = await self._db.run(work, write=True)
        except CancelledAfterCommit:
            self._remember(session_id, tail)  # written all the same: the session's tail is this request's
            raise
        except TailMoved:
            self.forget(session_id)
            raise
        self._remember(session_id, tail)
        return rows

    async def finish(
        self,
        *,
        message_id: str,
        session_id: str,
        content: list[dict[str, Any]],
        text: str,
        status: str,
        stop_reason: str | None,
        error_code: str | None,
        usage: UsageRow | None,
        tail: str,
    ) -> None:
        """The reply, its usage row and the session's new tail land together or not at all. Safe to repeat."""
        now = self._clock.now()
        reply = sql.finish_params(message_id, content, text, status, stop_reason, error_code, now)

        def work(conn: Connection) -> None:
            conn.execute(sql.FINISH_MESSAGE, reply)
            conn.execute(_SETTLE, {"session_id": session_id, "now": now, "tail": tail})
            if usage is not None:
                save_usage(conn, usage)

        await self._db.run(work, write=True)
        self._remember(session_id, tail)


def _message(session_id: str, seq: int, role: str, content: list[Any], text: str, now: Any) -> dict[str, Any]:
    return {
        "id": new_id(),
        "session_id": session_id,
        "seq": seq,
        "role": role,
        "content": content,
        "text": text,
        "model": None,
        "status": "complete",
        "stop_reason": None,
        "error_code": None,
        "idempotency_key": None,
        "created_at": now,
        "updated_at": now,
    }
