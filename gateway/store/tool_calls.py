"""The rows of a tool loop: each model request's reply saved as its own message, one `tool_calls` row per tool_use,
and the user message of `tool_result` blocks that answers them.

That message is rendered from the rows (`render_results`) and rewritten with every change of a call, in the same
transaction. An unfinished call renders as an error result saying what happened to it, so the stored history pairs
every `tool_use` with a `tool_result` at every moment: a crash leaves nothing to repair but statuses, and the next
request into the session is valid as it stands.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.engine import Connection

from gateway.clock import SYSTEM_CLOCK, Clock

from . import chat_sql as sql
from .base import Database
from .calibration import Calibrations
from .history import HistoryItem, version_at
from .models import Message, ToolCall
from .upserts import add_calibration, save_usage
from .usage_row import UsageRow

CALLS = cast(Table, ToolCall.__table__)
OPEN = ("pending", "approved", "running")
# What the model reads for a call that never finished: true whenever it is read (after a crash, a cancel or a
# shutdown), and precise enough that it does not repeat an action that may have happened.
UNFINISHED = {
    "pending": "Not run: the turn ended before this call was approved.",
    "approved": "Not run: the turn ended before this call started.",
    "running": "Interrupted; outcome unknown: the turn ended while this tool was running. Check its effects before "
    "calling it again.",
}

_CALLS_OF = (
    select(CALLS.c.tool_use_id, CALLS.c.status, CALLS.c.result, CALLS.c.is_error)
    .where(CALLS.c.result_message_id == bindparam("message_id"))
    .order_by(CALLS.c.position)
)
_RENDER = (
    update(sql.MESSAGES)
    .where(sql.MESSAGES.c.id == bindparam("message_id"))
    .values(content=bindparam("content"), updated_at=bindparam("now"))
)
_BUMP = (
    update(sql.SESSIONS)
    .where(sql.SESSIONS.c.id == bindparam("session_id"))
    .values(message_count=sql.SESSIONS.c.message_count + bindparam("added"), updated_at=bindparam("now"))
)
_CLOSE = (
    update(sql.MESSAGES)
    .where(sql.MESSAGES.c.id == bindparam("message_id"))
    .values(status=bindparam("status"), updated_at=bindparam("now"))
)


def result_block(tool_use_id: str, status: str, result: Any, is_error: bool) -> dict[str, Any]:
    if status in OPEN:
        result, is_error = UNFINISHED[status], True
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id, "content": result or ""}
    if is_error:
        block["is_error"] = True
    return block


def render_results(rows: Iterable[Sequence[Any]]) -> list[dict[str, Any]]:
    """(tool_use_id, status, result, is_error) rows in tool_use order -> the tool_result blocks the API expects."""
    return [result_block(*row) for row in rows]


@dataclass(frozen=True, slots=True)
class StepSaved:
    reply: HistoryItem  # the step's assistant message, as a read would return it
    added: list[HistoryItem]  # the messages the step started (its tool_result message, or the next reply)


class ToolCallStore:
    def __init__(
        self, database: Database, clock: Clock = SYSTEM_CLOCK, calibrations: Calibrations | None = None
    ) -> None:
        self._db = database
        self._clock = clock
        self._calibrations = calibrations  # the chat store's copy, kept current with the samples saved here

    async def save_step(
        self,
        *,
        session_id: str,
        reply: Mapping[str, Any],
        usage: UsageRow | None,
        calibration: tuple[str, int, int] | None,
        calls: Sequence[Mapping[str, Any]],
        new_messages: Sequence[Mapping[str, Any]],
    ) -> StepSaved:
        """One transaction: the step's reply finished (`reply`: FINISH_MESSAGE's parameters), its usage row, its tool
        calls and the messages that continue the turn (a streaming tool_result message rendered from `calls`, or the
        next streaming reply after a `pause_turn`)."""
        now = self._clock.now()
        messages = [dict(m) for m in new_messages]

        def work(conn: Connection) -> bool:
            conn.execute(sql.FINISH_MESSAGE, {**reply, "now": now})
            counted = (usage is None or save_usage(conn, usage)) and calibration is not None
            if counted and calibration is not None:
                add_calibration(conn, *calibration, now=now)
            for message in messages:
                if message["role"] == "user":
                    rows = [(c["tool_use_id"], c["status"], c.get("result"), c.get("is_error", False)) for c in calls]
                    message["content"] = render_results(rows)
                message.update(created_at=now, updated_at=now)
            if messages:
                conn.execute(sql.NEW_MESSAGES, messages)
            if calls:
                conn.execute(CALLS.insert(), [{**c, "created_at": now} for c in calls])
            conn.execute(_BUMP, {"session_id": session_id, "added": len(messages), "now": now})
            return counted

        if await self._db.run(work, write=True) and calibration is not None and self._calibrations is not None:
            self._calibrations.added(*calibration)
        version = version_at(now)
        saved = HistoryItem(reply["message_id"], "assistant", reply["content"], version, reply["status"])
        added = [HistoryItem(m["id"], m["role"], m["content"], version, m["status"]) for m in messages]
        return StepSaved(saved, added)

    async def update_call(self, call_id: str, result_message_id: str, **values: Any) -> None:
        """Change one call (its status, result, timings) and re-render the tool_result message it belongs to."""
        now = self._clock.now()

        def work(conn: Connection) -> None:
            conn.execute(update(CALLS).where(CALLS.c.id == call_id).values(**values))
            _rerender(conn, result_message_id, now)

        await self._db.run(work, write=True)

    async def continue_turn(
        self,
        *,
        session_id: str,
        result_message_id: str | None,
        status: str,
        next_reply: Mapping[str, Any] | None,
    ) -> tuple[HistoryItem | None, Message | None]:
        """One transaction: the tool_result message made final (`status`), and the next step's streaming reply
        started (`next_reply`, when the turn goes on). Returns both as a read would."""
        now = self._clock.now()
        reply = {**next_reply, "created_at": now, "updated_at": now} if next_reply is not None else None

        def work(conn: Connection) -> list[dict[str, Any]] | None:
            content = None
            if result_message_id is not None:
                content = _rerender(conn, result_message_id, now)
                conn.execute(_CLOSE, {"message_id": result_message_id, "status": status, "now": now})
            if reply is not None:
                conn.execute(sql.NEW_MESSAGES, [reply])
                conn.execute(_BUMP, {"session_id": session_id, "added": 1, "now": now})
            return content

        content = await self._db.run(work, write=True)
        item = None
        if result_message_id is not None and content is not None:
            item = HistoryItem(result_message_id, "user", content, version_at(now), status)
        return item, Message(**reply) if reply is not None else None

    async def decide(self, tool_use_id: str, decision: str, now: datetime) -> tuple[bool, ToolCall | None]:
        """Record a client's answer to a pending approval: (whether it was taken, the call as it now stands). Only the
        first answer before the deadline counts; the turn waiting on it does the rest."""
        stmt = (
            update(CALLS)
            .where(
                CALLS.c.tool_use_id == tool_use_id,
                CALLS.c.status == "pending",
                CALLS.c.decision.is_(None),
                CALLS.c.expires_at > now,
            )
            .values(decision=decision, decided_at=now)
        )

        def work(conn: Connection) -> tuple[bool, ToolCall | None]:
            taken = bool(conn.execute(stmt).rowcount)
            row = conn.execute(select(CALLS).where(CALLS.c.tool_use_id == tool_use_id)).first()
            return taken, None if row is None else ToolCall(**row._asdict())

        return await self._db.run(work, write=True)

    async def expire(self, call_id: str, now: datetime) -> str | None:
        """The approval's deadline passed: record `expired` unless an answer came first; returns the decision."""
        stmt = update(CALLS).where(CALLS.c.id == call_id, CALLS.c.decision.is_(None)).values(decision="expired")

        def work(conn: Connection) -> str | None:
            conn.execute(stmt.values(decided_at=now))
            return conn.execute(select(CALLS.c.decision).where(CALLS.c.id == call_id)).scalar()

        return await self._db.run(work, write=True)

    async def decision(self, call_id: str) -> str | None:
        stmt = select(CALLS.c.decision).where(CALLS.c.id == call_id)
        return await self._db.run(lambda conn: conn.execute(stmt).scalar())

    async def pending(self, session_id: str | None, now: datetime) -> list[ToolCall]:
        """Approvals still waiting for an answer, oldest first."""
        stmt = select(CALLS).where(CALLS.c.status == "pending", CALLS.c.decision.is_(None), CALLS.c.expires_at > now)
        if session_id is not None:
            stmt = stmt.where(CALLS.c.session_id == session_id)
        stmt = stmt.order_by(CALLS.c.created_at, CALLS.c.position)
        rows = await self._db.run(lambda conn: conn.execute(stmt).all())
        return [ToolCall(**row._asdict()) for row in rows]

    async def session_grants(self, session_id: str) -> set[str]:
        """Tools the user allowed for the whole session (`allow_session`)."""
        stmt = select(CALLS.c.name).where(CALLS.c.session_id == session_id, CALLS.c.decision == "allow_session")
        return set(await self._db.run(lambda conn: conn.execute(stmt.distinct()).scalars().all()))

    async def calls_of(self, message_ids: Sequence[str]) -> list[ToolCall]:
        """The calls made in these (assistant) messages, in order."""
        if not message_ids:
            return []
        stmt = select(CALLS).where(CALLS.c.message_id.in_(list(message_ids))).order_by(CALLS.c.created_at)
        rows = await self._db.run(lambda conn: conn.execute(stmt.order_by(CALLS.c.position)).all())
        return [ToolCall(**row._asdict()) for row in rows]


def _rerender(conn: Connection, result_message_id: str, now: datetime) -> list[dict[str, Any]]:
    content = render_results(conn.execute(_CALLS_OF, {"message_id": result_message_id}).all())
    conn.execute(_RENDER, {"message_id": result_message_id, "content": content, "now": now})
    return content


def interrupt_open_calls(conn: Connection, result_message_ids: Sequence[str] | None, now: datetime) -> int:
    """Calls left open by a turn that died (crash, kill -9): each keeps the result it already renders as, so the
    history the model reads does not change; only the row's status says what became of it."""
    stmt = select(CALLS.c.id, CALLS.c.status).where(CALLS.c.status.in_(OPEN))
    if result_message_ids is not None:
        stmt = stmt.where(CALLS.c.result_message_id.in_(list(result_message_ids)))
    else:
        streaming = select(sql.MESSAGES.c.id).where(sql.MESSAGES.c.status == "streaming")
        stmt = stmt.where(CALLS.c.result_message_id.in_(streaming))
    rows = conn.execute(stmt).all()
    for call_id, status in rows:
        conn.execute(
            update(CALLS)
            .where(CALLS.c.id == call_id)
            .values(status="interrupted", result=UNFINISHED[status], is_error=True, finished_at=now)
        )
    return len(rows)
