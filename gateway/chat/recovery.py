"""Start-up recovery: replies left `streaming` by a process that died become `interrupted`, keeping their text, and so
do the provisional usage rows of their requests, keeping what was last checkpointed (chat/spend.py).

Several processes may share the database, and the others may be streaming right now, so a reply is only an orphan
when its session's lock can be taken: a live owner holds it (PostgreSQL advisory lock), a dead one cannot. With one
process on SQLite every lock is free at start-up, so the same rule marks every such reply.
"""

from __future__ import annotations

import logging

from gateway.errors import StreamInProgress
from gateway.store import Store

from .locks import SessionLocks

log = logging.getLogger(__name__)


async def recover_orphans(store: Store, locks: SessionLocks) -> int:
    """Replies and usage rows left `streaming` by a dead process, in sessions no live process holds; the number of
    replies recovered (usage rows are logged)."""
    recovered = rows = 0
    replies = await store.chats.streaming_replies()
    usage = await store.usage.provisional_rows()
    for session_id in sorted(replies.keys() | usage.keys()):
        try:
            lease = await locks.acquire(session_id)
        except StreamInProgress:
            continue  # a live process is streaming this session; its reply is not ours to touch
        try:
            # Only the ids seen above, and only if still `streaming`: a reply that finished meanwhile is left alone.
            if session_id in replies:
                recovered += await store.chats.recover_interrupted(message_ids=replies[session_id])
            if session_id in usage:
                rows += await store.usage.recover_interrupted(ids=usage[session_id])
        finally:
            await lease.release()
    if rows:
        log.warning("%d usage rows of requests cut short by a process that died: counted as last checkpointed", rows)
    return recovered
