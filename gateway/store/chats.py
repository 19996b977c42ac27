"""Sessions and messages: the user turn is committed before the upstream call, the reply when the stream ends."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import DuplicateRequest, SessionNotFound

from . import chat_sql as sql
from .base import Database
from .calibration import Calibrations
from .history import HistoryItem, HistoryLoader, HistoryRead, version_at
from .models import ChatSession, Message, TokenCalibration
from .snapshots import Snapshot, Snapshots, StaleSnapshot
from .sqlite_threads import CancelledAfterCommit
from .tool_calls import interrupt_open_calls
from .upserts import add_calibration, save_usage, update_provisional
from .usage_row import UsageRow

TITLE_CHARS = 80
MAX_TURN_MESSAGES = 1000  # a turn's replies and tool results, read back for a resent send (bounded by max_requests)


def _tool_results(content: list[dict[str, Any]]) -> bool:
    return bool(content) and all(block.get("type") == "tool_result" for block in content)


@dataclass(frozen=True, slots=True)
class TurnRows:
    session: ChatSession
    user_message: Message
    assistant_message: Message
    session_created: bool
    key_id: str | None = None  # the gateway key the turn came with; its usage rows name it
    purpose: str = "chat"  # what its usage rows say the requests were for: "chat", or "compaction"


def new_id() -> str:
    return str(uuid.uuid4())


def make_title(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"


class ChatStore:
    def __init__(self, database: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = database
        self._clock = clock
        self._history = HistoryLoader(database)
        self._calibrations = Calibrations(database, clock)
        self._snapshots = Snapshots()

    @property
    def calibrations(self) -> Calibrations:
        return self._calibrations

    def snapshot(self, session_id: str) -> Snapshot | None:
        """The session and its history as this process last wrote them (see snapshots.py), if it remembers them."""
        return self._snapshots.get(session_id)

    async def get_session(self, session_id: str) -> ChatSession | None:
        def work(conn: Connection) -> ChatSession | None:
            row = conn.execute(sql.GET_SESSION, {"session_id": session_id}).first()
            return None if row is None else ChatSession(**row._asdict())

        return await self._db.run(work)

    async def session_with_history(self, session_id: str) -> tuple[ChatSession | None, list[HistoryItem]]:
        """The session and its history in one unit of work (one trip to the database's thread on SQLite): what a
        send into an existing session and an inspect both start with."""

        def work(conn: Connection) -> tuple[ChatSession | None, HistoryRead | None]:
            row = conn.execute(sql.GET_SESSION, {"session_id": session_id}).first()
            if row is None:
                return None, None
            return ChatSession(**row._asdict()), self._history.read(conn, session_id)

        session, read = await self._db.run(work)
        return session, [] if read is None else self._history.finish(read)

    async def load_history(self, session_id: str) -> list[HistoryItem]:
        """Every message of the session in order, for assembling the next request."""
        return await self._history.load(session_id)

    async def find_by_idempotency_key(self, key: str) -> tuple[Message, Message | None] | None:
        """The user message sent with this key and the reply that followed it. A turn of several model requests (a
        tool loop) answers as its last reply, holding the text of all of them, `streaming` while any part still is."""
        async with self._db.read() as db:
            user = await db.scalar(select(Message).where(Message.idempotency_key == key))
            if user is None:
                return None
            after = select(Message).where(Message.session_id == user.session_id, Message.seq > user.seq)
            turn: list[Message] = []
            for message in (await db.scalars(after.order_by(Message.seq).limit(MAX_TURN_MESSAGES))).all():
                if message.role == "user" and not _tool_results(message.content):
                    break  # the next turn's own message
                turn.append(message)
        replies = [m for m in turn if m.role == "assistant"]
        if len(turn) <= 1 or not replies:
            return user, replies[0] if replies else None
        last = replies[-1]
        status = "streaming" if any(m.status == "streaming" for m in turn) else last.status
        fields = {c.key: getattr(last, c.key) for c in sql.MESSAGES.c}
        return user, Message(**{**fields, "text": "".join(m.text for m in replies), "status": status})

    async def begin_turn(
        self,
        *,
        session_id: str,
        create: bool,
        agent_id: str,
        model: str,
        content: str,
        idempotency_key: str | None,
        history: list[HistoryItem] | None = None,
        snapshot_count: int | None = None,
        key_id: str | None = None,
    ) -> TurnRows:
        """One transaction: the session (if `create`, with the id given), the user turn, and an empty `streaming`
        reply to fill in. `history`: what the turn was assembled from, remembered for the next send once the reply
        is saved. `snapshot_count`: the session's message count in the snapshot it came from; if the session has
        moved on since, nothing is written and StaleSnapshot is raised."""
        now = self._clock.now()
        user_id, reply_id = new_id(), new_id()

        def work(conn: Connection) -> TurnRows:
            if create:
                fields = {
                    "id": session_id,
                    "agent_id": agent_id,
                    "title": make_title(content),
                    "model": model,
                    "message_count": 2,
                    "created_at": now,
                    "updated_at": now,
                }
                conn.execute(sql.NEW_SESSION, fields)
                session, next_seq = ChatSession(**fields), 0
            else:
                row = conn.execute(sql.BUMP_SESSION, {"session_id": session_id, "now": now, "model": model}).first()
                if row is None:
                    raise SessionNotFound(f"session {session_id} does not exist", sessionId=session_id)
                *columns, last_seq = row
                session = ChatSession(**dict(zip(sql.SESSIONS.c.keys(), columns, strict=True)))
                if snapshot_count is not None and session.message_count != snapshot_count + 2:
                    raise StaleSnapshot(session_id)  # rolls this transaction back: nothing is written
                next_seq = 0 if last_seq is None else last_seq + 1
            user = {
                "id": user_id,
                "session_id": session_id,
                "seq": next_seq,
                "role": "user",
                "content": [{"type": "text", "text": content}],
                "text": content,
                "model": None,
                "status": "complete",
                "stop_reason": None,
                "error_code": None,
                "idempotency_key": idempotency_key,
                "created_at": now,
                "updated_at": now,
            }
            reply = {
                **user,
                "id": reply_id,
                "seq": next_seq + 1,
                "role": "assistant",
                "content": [],
                "text": "",
                "model": model,
                "status": "streaming",
                "idempotency_key": None,
            }
            conn.execute(sql.NEW_MESSAGES, [user, reply])
            return TurnRows(
                session=session,
                user_message=Message(**user),
                assistant_message=Message(**reply),
                session_created=create,
                key_id=key_id,
            )

        try:
            rows = await self._db.run(work, write=True)
        except CancelledAfterCommit as cancelled:
            written = cast(TurnRows, cancelled.result)  # the caller ends the reply it wrote
            self._snapshots.written(written.assistant_message.id, written.session, history, written.user_message)
            raise
        except StaleSnapshot:
            self._snapshots.drop(session_id)
            raise
        except IntegrityError as exc:
            # The unique index on idempotency_key settles two sends with one key racing past the duplicate check.
            if idempotency_key is not None and await self.find_by_idempotency_key(idempotency_key) is not None:
                raise DuplicateRequest(f"a send with idempotencyKey {idempotency_key!r} already exists") from exc
            raise
        self._snapshots.written(rows.assistant_message.id, rows.session, history, rows.user_message)
        return rows

    def drop_snapshot(self, session_id: str) -> None:
        """The session changed in a way a snapshot cannot follow (it was compacted): the next send reads it afresh."""
        self._snapshots.drop(session_id)

    def forget_turn(self, reply_id: str) -> None:
        """The turn went on past its first reply (a tool loop): the next send reads the session afresh."""
        self._snapshots.abandon(reply_id)

    async def checkpoint(
        self, message_id: str, content: list[dict[str, Any]], text: str, usage: UsageRow | None = None
    ) -> None:
        """A streaming reply's text so far, and its request's provisional usage row, together."""
        params = {"message_id": message_id, "content": content, "text": text, "now": self._clock.now()}

        def work(conn: Connection) -> None:
            conn.execute(sql.CHECKPOINT, params)
            if usage is not None:
                update_provisional(conn, usage)

        await self._db.run(work, write=True, background=True)

    async def finish_turn(
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
        calibration: tuple[str, int, int] | None = None,
    ) -> None:
        """The reply, its usage row and the calibration sample land together or not at all."""
        now = self._clock.now()
        reply = sql.finish_params(message_id, content, text, status, stop_reason, error_code, now)

        def work(conn: Connection) -> bool:
            conn.execute(sql.FINISH_MESSAGE, reply)
            conn.execute(sql.TOUCH_SESSION, {"session_id": session_id, "now": now})
            # A retry after a commit whose answer was lost finds its usage row there: count neither it nor the
            # calibration sample twice.
            first_time = usage is None or save_usage(conn, usage)
            if calibration is not None and first_time:
                add_calibration(conn, *calibration, now=now)
                return True
            return False

        try:
            counted = await self._db.run(work, write=True)
        except BaseException:
            self._snapshots.abandon(message_id)
            raise
        self._snapshots.finished(HistoryItem(message_id, "assistant", content, version_at(now), status))
        if counted and calibration is not None:
            self._calibrations.added(*calibration)

    async def delete_session(self, session_id: str) -> bool:
        self._snapshots.drop(session_id)
        async with self._db.write() as db:
            # Explicit, so deletion does not depend on the database enforcing ON DELETE CASCADE.
            await db.execute(delete(Message).where(Message.session_id == session_id))
            result = await db.execute(delete(ChatSession).where(ChatSession.id == session_id))
            return bool(getattr(result, "rowcount", 0))

    async def streaming_replies(self) -> dict[str, list[str]]:
        """Session id -> ids of its replies still marked `streaming` (live, or orphaned by a dead process)."""
        query = select(Message.session_id, Message.id).where(Message.status == "streaming")
        async with self._db.read() as db:
            rows = (await db.execute(query)).all()
        found: dict[str, list[str]] = {}
        for session_id, message_id in rows:
            found.setdefault(session_id, []).append(message_id)
        return found

    async def recover_interrupted(self, message_ids: list[str] | None = None) -> int:
        """Replies left `streaming` by a process that died are marked `interrupted`, keeping checkpointed text."""
        self._snapshots.clear()
        query = update(Message).where(Message.status == "streaming")
        if message_ids is not None:
            query = query.where(Message.id.in_(message_ids))
        now = self._clock.now()
        async with self._db.write() as db:
            # Tool calls first: which of them were left open is read off their result message still `streaming`.
            await db.run_sync(lambda sync: interrupt_open_calls(sync.connection(), message_ids, now))
            result = await db.execute(query.values(status="interrupted", updated_at=now))
            return int(getattr(result, "rowcount", 0) or 0)

    async def calibration(self, model: str) -> TokenCalibration | None:
        return await self._calibrations.get(model)
