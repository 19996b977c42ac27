"""Session locks every gateway process on one SQLite file sees: byte-range locks on a lock file beside the database.

Why a lock file and not a lease row in SQL: a lease row outlives a process that dies (kill -9, OOM, power loss), so
its sessions stay refused until a heartbeat expires, and keeping heartbeats fresh means a write every few seconds
from every process into the one-writer database; taking and giving back a lease would also add two write
transactions to every turn. A lock the kernel holds for an open file is gone the instant its process is, whatever
killed it, costs one system call to take or give back, and never writes to the database. It is the same contract
as the PostgreSQL advisory locks (pg_locks.py): held by something that lives exactly as long as the process.

Each session is one byte of `<database>-sessions.lock`, at an offset hashed from its id (the same hash as the
advisory locks' keys, 62 bits: two sessions that collide only get a needless STREAM_IN_PROGRESS, which the client
retries). Locks are taken with F_OFD_SETLK (Linux): "open file description" locks belong to the open file, not
the process, so closing some other descriptor of the file never drops them, and two gateways in one process (the
tests) exclude each other as two processes do. Where OFD locks do not exist (macOS), classic POSIX locks
(`fcntl.lockf`) are used: per process, which is what separate processes need. The file is opened close-on-exec, so
a tool's subprocess never inherits, and keeps, the locks.

The kernel lets a process take its own byte twice, so the in-process set refuses that (and answers most refusals
without a system call), as for PostgreSQL.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from pathlib import Path

from gateway.errors import StreamInProgress

from .locks import OnceLease
from .pg_locks import session_key

_OFFSET_MASK = (1 << 62) - 1  # off_t is signed 64-bit; start + length must stay inside it
_OFD_SETLK: int | None = getattr(fcntl, "F_OFD_SETLK", None)
# struct flock on Linux: short l_type, short l_whence, (pad), off_t l_start, off_t l_len, pid_t l_pid (0 for OFD).
_FLOCK = struct.Struct("hhxxxxqqi4x")
_REFUSED = (errno.EAGAIN, errno.EACCES)


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + "-sessions.lock")


def session_offset(session_id: str) -> int:
    return session_key(session_id) & _OFFSET_MASK


class FileSessionLocks:
    def __init__(self, path: Path) -> None:
        self.path = path
        # O_CLOEXEC is Python's default (PEP 446); said anyway, since inheriting it would keep sessions locked.
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self.busy: set[str] = set()
        self.ofd = _OFD_SETLK is not None

    @classmethod
    def beside(cls, database: Path) -> FileSessionLocks:
        return cls(lock_path(database))

    async def acquire(self, session_id: str) -> OnceLease:
        if session_id in self.busy:
            raise StreamInProgress(f"session {session_id} is already streaming a reply", sessionId=session_id)
        if not self._set(session_offset(session_id), lock=True):
            raise StreamInProgress(
                f"session {session_id} is streaming a reply through another gateway process", sessionId=session_id
            )
        self.busy.add(session_id)
        return OnceLease(lambda: self.release(session_id))

    def release(self, session_id: str) -> None:
        if session_id in self.busy:
            self.busy.discard(session_id)
            self._set(session_offset(session_id), lock=False)

    async def close(self) -> None:
        fd, self._fd = self._fd, None
        self.busy.clear()
        if fd is not None:
            os.close(fd)  # every lock this process holds on the file goes with it

    def _set(self, offset: int, *, lock: bool) -> bool:
        """Take (or give back) one byte without waiting. False when another holder has it."""
        if self._fd is None:
            raise RuntimeError("session locks are closed")
        try:
            if _OFD_SETLK is not None:
                kind = fcntl.F_WRLCK if lock else fcntl.F_UNLCK
                fcntl.fcntl(self._fd, _OFD_SETLK, _FLOCK.pack(kind, os.SEEK_SET, offset, 1, 0))
            else:
                fcntl.lockf(self._fd, (fcntl.LOCK_EX | fcntl.LOCK_NB) if lock else fcntl.LOCK_UN, 1, offset)
        except OSError as exc:
            if lock and exc.errno in _REFUSED:
                return False
            raise
        return True
