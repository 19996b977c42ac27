"""Finished replies the database could not take: held in memory and saved when it is back.

A reply that streams to its end during an outage has been paid for and read by its client. `turn_end.settle` rides
out a short outage itself (about 16 s); past that the reply (its text, blocks and usage row, exactly as `finish_turn`
would have written them) is handed here, the client gets its end frame with `pendingSave: true`, and the save is
retried until the database takes it. Until then the session stays locked (`STREAM_IN_PROGRESS`, retryable), so no
send reads a history that lacks the reply. `finish_turn` is idempotent, so a commit whose answer was lost is not
counted twice. Held replies are lost if the process stops before the database is back (logged at ERROR); their
last checkpoint survives and becomes `interrupted` at the next start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway import errors

from .locks import SessionLease

log = logging.getLogger(__name__)

RETRY_FIRST_S = 1.0
RETRY_MAX_S = 10.0

Save = Callable[[], Awaitable[None]]


class HeldReplies:
    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closing = asyncio.Event()

    @property
    def count(self) -> int:
        return len(self._tasks)

    def hold(self, reply_id: str, save: Save, lease: SessionLease | None) -> None:
        """Keep retrying `save` until it succeeds; then release the session's `lease`."""
        log.warning("reply %s is held in memory until the database is back", reply_id)
        task = asyncio.get_running_loop().create_task(
            self._save_when_back(reply_id, save, lease), name=f"held-{reply_id}"
        )
        self._tasks[reply_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(reply_id, None))

    async def _save_when_back(self, reply_id: str, save: Save, lease: SessionLease | None) -> None:
        delay = RETRY_FIRST_S
        try:
            while True:
                last_try = self._closing.is_set()
                try:
                    await save()
                except errors.DatabaseUnavailable as exc:
                    if last_try:
                        log.error(
                            "reply %s was held and is lost: the database is still unavailable (%s)", reply_id, exc
                        )
                        return
                    try:
                        await asyncio.wait_for(self._closing.wait(), delay)
                    except TimeoutError:
                        pass
                    delay = min(delay * 2, RETRY_MAX_S)
                    continue
                log.warning("reply %s, held through a database outage, is saved", reply_id)
                return
        except Exception:
            log.exception("reply %s was held and could not be saved", reply_id)
        finally:
            if lease is not None:
                await lease.release()

    async def close(self) -> None:
        """At shutdown: each held reply gets one last try, now; what the database still refuses is lost (logged)."""
        self._closing.set()
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
