"""Periodic saves of a streaming reply's partial text, so a crash loses at most one interval of it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Checkpointer:
    """Calls `save` at most once per `interval_s`, and only when something new was relayed since the last save.

    It runs as its own task rather than on the next delta: an upstream that goes quiet after some text would
    otherwise leave that text unsaved for as long as it stays quiet. `stop` lets a save in progress finish (a write
    is never cancelled half-way); the final state is written by the turn itself.
    """

    def __init__(self, save: Callable[[], Awaitable[None]], interval_s: float) -> None:
        self._save = save
        self._interval_s = interval_s
        self._dirty = False
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._interval_s > 0:
            self._task = asyncio.create_task(self._run(), name="checkpoint")

    def touch(self) -> None:
        self._dirty = True

    async def stop(self) -> None:
        self._stopped.set()
        if self._task is not None:
            # Shielded: a second cancellation of the turn must not cut a write in half.
            await asyncio.shield(self._task)

    async def _run(self) -> None:
        while not self._stopped.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), self._interval_s)
            if self._dirty and not self._stopped.is_set():
                self._dirty = False
                try:
                    await self._save()
                except Exception:
                    # A missed checkpoint only widens what a crash could lose; the stream itself goes on.
                    log.warning("checkpoint failed", exc_info=True)
