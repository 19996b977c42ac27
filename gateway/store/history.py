"""A session's history as context assembly needs it, fast enough to rebuild on every send and every inspect.

Each call asks SQL for the messages' ids and versions (cheap), and their content only for messages it has not seen
at that version: a 1,000-message session is otherwise ~1 MB of JSON read and decoded on every call. The cache is
keyed by (id, version) and the version comes from the row itself, so a changed message is always read again, also
when another process changed it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import String, Text, bindparam, cast, select
from sqlalchemy.engine import Connection

from .base import Database
from .db import json_loads
from .models import Message

# Bounded by the JSON text's characters (the decoded objects take a few times more memory); a full cache only
# means more reads, never a wrong answer.
DEFAULT_MAX_CHARS = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class HistoryItem:
    """One stored message. `content` may be shared with other callers: never change it in place."""

    id: str
    role: str
    content: list[dict[str, Any]]
    version: str  # changes whenever the message does: its updated_at, as text (parsing 1,000 dates costs ~5 ms)
    # A reply still `streaming` while its session's lock is free was left by a process that died.
    status: str = "complete"
    kind: str = "message"  # or "summary": a compaction's summary (gateway/context/compaction.py)
    compacted_by: str | None = None  # the summary that covers it: no longer sent

    @property
    def compacted(self) -> bool:
        return self.compacted_by is not None


def version_at(stamp: datetime) -> str:
    # Not the database's own rendering of updated_at: a message known from a snapshot and the same message read
    # back are measured (and cached) under different keys, never a stale one under a current key.
    return f"written {stamp.isoformat()}"


# What `read` hands `finish`: the heads, the cache hits it saw, the contents it fetched.
HistoryRead = tuple[list[Any], list[Any], list[Any]]

# The version as text on every database, and content as the JSON text stored (sized, then decoded here).
_VERSION = cast(Message.updated_at, String)
_CONTENT_TEXT = cast(Message.content, Text)
# Built once: constructing a statement costs about as much as running this one on a warm cache.
# Kind and compaction are read with the heads, not cached with the content: compacting a session marks its messages
# without changing their versions, so their contents (and measurements) stay cached.
_HEADS = (
    select(Message.seq, Message.id, Message.role, _VERSION, Message.status, Message.kind, Message.compacted_by)
    .where(Message.session_id == bindparam("session_id"))
    .order_by(Message.seq)
)
_CONTENTS = select(Message.id, _VERSION, Message.status, _CONTENT_TEXT).where(
    Message.session_id == bindparam("session_id"), Message.seq >= bindparam("since")
)


class HistoryLoader:
    def __init__(self, database: Database, max_chars: int = DEFAULT_MAX_CHARS) -> None:
        self._db = database
        self._max_chars = max_chars
        self._cache: OrderedDict[tuple[str, str], tuple[list[dict[str, Any]], int]] = OrderedDict()
        self._cached_chars = 0

    async def load(self, session_id: str) -> list[HistoryItem]:
        """Every message of the session, in order."""
        return self.finish(await self._db.run(lambda conn: self.read(conn, session_id)))

    def read(self, conn: Connection, session_id: str) -> HistoryRead:
        """The SQL half, in one unit of work: the versions, the cache's hits as they stand now (held, so an
        eviction meanwhile loses nothing) and the contents it lacks. Only reads the cache, so it may run in a
        database thread; `finish` changes it, on the event loop."""
        heads = list(conn.execute(_HEADS, {"session_id": session_id}).all())
        cache = self._cache
        known: list[Any] = [cache.get((head[1], head[3])) for head in heads]
        first_unknown = next((head[0] for head, hit in zip(heads, known, strict=True) if hit is None), None)
        contents: list[Any] = []
        if first_unknown is not None:
            # New messages come last, so one range read from the first unknown one covers the usual case.
            contents = list(conn.execute(_CONTENTS, {"session_id": session_id, "since": first_unknown}).all())
        return heads, known, contents

    def finish(self, read: HistoryRead) -> list[HistoryItem]:
        heads, known, contents = read
        cache = self._cache
        fetched: dict[str, tuple[str, str, list[dict[str, Any]]]] = {}
        for message_id, version, status, text in contents:
            content = json_loads(text) if text is not None else []
            fetched[message_id] = (version, status, content)
            self._remember((message_id, version), content, len(text or ""))
        items: list[HistoryItem] = []
        for (_, message_id, role, version, status, kind, compacted_by), hit in zip(heads, known, strict=True):
            found = fetched.get(message_id) if fetched else None
            if found is not None:
                # Read a moment after the versions: if the message changed in between, the newer read wins.
                version, status, content = found
            elif hit is not None:
                if (message_id, version) in cache:
                    cache.move_to_end((message_id, version))
                content = hit[0]
            else:
                continue  # deleted between the two reads
            items.append(HistoryItem(message_id, role, content, version, status, kind, compacted_by))
        return items

    def _remember(self, key: tuple[str, str], content: list[dict[str, Any]], chars: int) -> None:
        if chars > self._max_chars or key in self._cache:
            return
        self._cache[key] = (content, chars)
        self._cached_chars += chars
        while self._cached_chars > self._max_chars:
            _, (_, dropped) = self._cache.popitem(last=False)
            self._cached_chars -= dropped
