"""A clock the test sets: the whole gateway runs at a chosen moment (`Settings(clock=...)`, gateway/clock.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

TICK = timedelta(microseconds=1)


class SetClock:
    """Reads `moment`, moving on by a microsecond at every reading, as a real clock moves on between two reads: two
    writes never share a timestamp (message versions are their `updated_at`), and nothing depends on how long a step
    takes, so a request set a second before midnight stays before midnight on the slowest machine."""

    def __init__(self, moment: datetime) -> None:
        self._now = moment.astimezone(UTC)

    def now(self) -> datetime:
        self._now += TICK
        return self._now

    def set(self, moment: datetime) -> None:
        self._now = moment.astimezone(UTC)

    def advance(self, by: timedelta) -> None:
        self._now += by


def utc(text: str) -> datetime:
    """`utc("2026-10-06T23:59:59")` -> that moment in UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)
