"""One stream per session. In-process here; the PostgreSQL flavour adds a lock that other processes see."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.errors import StreamInProgress


class SessionLease(Protocol):
    async def release(self) -> None: ...


class SessionLocks(Protocol):
    async def acquire(self, session_id: str) -> SessionLease:
        """Take the session or raise StreamInProgress at once; never wait behind another stream."""
        ...

    async def close(self) -> None: ...


class OnceLease:
    """A session held until `release`, which gives it back once however often it is called (a turn's end and its
    cleanup both release). `give_back` is the flavour's own: synchronous, or a coroutine to await."""

    def __init__(self, give_back: Callable[[], Awaitable[None] | None]) -> None:
        self._give_back: Callable[[], Awaitable[None] | None] | None = give_back

    async def release(self) -> None:
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            pending = give_back()
            if pending is not None:
                await pending


class LocalSessionLocks:
    def __init__(self) -> None:
        self.busy: set[str] = set()

    async def acquire(self, session_id: str) -> SessionLease:
        if session_id in self.busy:
            raise StreamInProgress(f"session {session_id} is already streaming a reply", sessionId=session_id)
        self.busy.add(session_id)
        return OnceLease(lambda: self.busy.discard(session_id))

    async def close(self) -> None:
        self.busy.clear()
