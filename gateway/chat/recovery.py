"""Start-up recovery: replies left `streaming` by a process that died become `interrupted`, keeping their text.

Several processes may share the database, and the others may be streaming right now, so a reply is only an orphan
when its session's lock can be taken: a live owner holds it (PostgreSQL advisory lock), a dead one cannot. With one
process on SQLite every lock is free at start-up, so the same rule marks every such reply.
"""

from __future__ import annotations

from gateway.errors import StreamInProgress
from gateway.store import Store

from .locks import SessionLocks


async def recover_orphans(store: Store, locks: SessionLocks) -> int:
    recovered = 0
    for session_id, message_ids in (await store.chats.streaming_replies()).items():
        try:
            lease = await locks.acquire(session_id)
        except StreamInProgress:
            continue  # a live process is streaming this session; its reply is not ours to touch
        try:
            # Only the ids seen above, and only if still `streaming`: a reply that finished meanwhile is left alone.
            recovered += await store.chats.recover_interrupted(message_ids=message_ids)
        finally:
            await lease.release()
    return recovered
