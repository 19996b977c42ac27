"""A turn's statements on sessions and messages, built once (building one costs about what running it does) and run
through Database.run: in SQLite's own threads, one event-loop hop per transaction rather than the async ORM's one
per statement."""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, update

from .models import ChatSession, Message

SESSIONS = cast(Table, ChatSession.__table__)
MESSAGES = cast(Table, Message.__table__)
GET_SESSION = select(SESSIONS).where(SESSIONS.c.id == bindparam("session_id"))
NEW_SESSION = insert(SESSIONS)
# Continuing a session: bump it, and learn both that it exists and its last seq, in one statement. A chat.send
# changes the conversation an HTTP client holds (gateway/chat/transcript.py): its tail no longer matches.
BUMP_SESSION = (
    update(SESSIONS)
    .where(SESSIONS.c.id == bindparam("session_id"))
    .values(
        message_count=SESSIONS.c.message_count + 2,
        updated_at=bindparam("now"),
        model=bindparam("model"),
        tail_hash=None,
    )
    .returning(
        *SESSIONS.c,
        select(func.max(MESSAGES.c.seq)).where(MESSAGES.c.session_id == bindparam("session_id")).scalar_subquery(),
    )
)
NEW_MESSAGES = insert(MESSAGES)
CHECKPOINT = (
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("message_id"), MESSAGES.c.status == "streaming")
    .values(content=bindparam("content"), text=bindparam("text"), updated_at=bindparam("now"))
)
FINISH_MESSAGE = (
    update(MESSAGES)
    .where(MESSAGES.c.id == bindparam("message_id"))
    .values(
        content=bindparam("content"),
        text=bindparam("text"),
        status=bindparam("status"),
        stop_reason=bindparam("stop_reason"),
        error_code=bindparam("error_code"),
        updated_at=bindparam("now"),
    )
)


def finish_params(
    message_id: str,
    content: list[dict[str, Any]],
    text: str,
    status: str,
    stop_reason: str | None,
    error_code: str | None,
    now: datetime,
) -> dict[str, Any]:
    """FINISH_MESSAGE's parameters: a reply as it ended."""
    return {
        "message_id": message_id,
        "content": content,
        "text": text,
        "status": status,
        "stop_reason": stop_reason,
        "error_code": error_code,
        "now": now,
    }


TOUCH_SESSION = update(SESSIONS).where(SESSIONS.c.id == bindparam("session_id")).values(updated_at=bindparam("now"))
