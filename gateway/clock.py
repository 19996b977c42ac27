"""The gateway's one source of the current date and time.

Everything that depends on *when* asks the clock: which price is in force, which budget day and month a send falls
in, and every timestamp written to the database. The clock lives on `Settings` (`settings.clock`, and
`Services.clock` for the running gateway), so a test or a replay can run the whole gateway at a chosen moment, e.g.
just before and just after a price change. Durations are not the clock's business: they use `time.monotonic()`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current moment, timezone-aware, in UTC."""
        ...


class SystemClock:
    """The machine's own clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
