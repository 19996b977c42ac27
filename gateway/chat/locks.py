"""One stream per session. In-process here; the PostgreSQL flavour adds a lock that other processes see."""

from __future__ import annotations

from typing import Protocol

from gateway.errors import StreamInProgress


class SessionLease(Protocol):
    async def release(self) -> None: ...


class SessionLocks(Protocol):
    async def acquire(self, session_id: str) -> SessionLease:
        """Take the session or raise StreamInProgress at once; never wait behind another stream."""
        ...

    async def close(self) -> None: ...


class _LocalLease:
    def __init__(self, owner: LocalSessionLocks, session_id: str) -> None:
        self._owner = owner
        self._session_id = session_id
        self._released = False

    async def release(self) -> None:
        if not self._released:
            self._released = True
            self._owner.busy.discard(self._session_id)


class LocalSessionLocks:
    def __init__(self) -> None:
        self.busy: set[str] = set()

    async def acquire(self, session_id: str) -> SessionLease:
        if session_id in self.busy:
            raise StreamInProgress(f"session {session_id} is already streaming a reply", sessionId=session_id)
        self.busy.add(session_id)
        return _LocalLease(self, session_id)

    async def close(self) -> None:
        self.busy.clear()
