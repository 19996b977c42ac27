"""A finished conversation's rows as the gateway stores them, for the seeders (seed.py, history.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

MODEL = "claude-sonnet-5-5"


def message_row(
    message_id: str, session_id: str, seq: int, role: str, content: list[dict[str, Any]], text: str, at: datetime
) -> dict[str, Any]:
    """A complete message; an assistant's names the model and ended its turn."""
    assistant = role == "assistant"
    return {
        "id": message_id,
        "session_id": session_id,
        "seq": seq,
        "role": role,
        "content": content,
        "text": text,
        "model": MODEL if assistant else None,
        "status": "complete",
        "stop_reason": "end_turn" if assistant else None,
        "error_code": None,
        "idempotency_key": None,
        "created_at": at,
        "updated_at": at,
    }


def session_row(
    session_id: str, title: str, message_count: int, created: datetime, updated: datetime
) -> dict[str, Any]:
    return {
        "id": session_id,
        "agent_id": "default",
        "title": title,
        "model": MODEL,
        "message_count": message_count,
        "created_at": created,
        "updated_at": updated,
    }
