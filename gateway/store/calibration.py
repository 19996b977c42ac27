"""This process's copy of token_calibration (one row per model): every send and inspect reads it, and a trip to the
database each time was about a tenth of a turn's SQL (issue 7). The copy is read again every few seconds, to take
in other processes' samples, and follows this process's own samples at once; it only scales estimates."""

from __future__ import annotations

import time
from typing import cast

from sqlalchemy import Table, select

from gateway.clock import SYSTEM_CLOCK, Clock

from .base import Database
from .models import TokenCalibration
from .upserts import add_output_calibration

# How long this process trusts its copy before reading the table again.
CALIBRATION_COPY_S = 5.0
_C = cast(Table, TokenCalibration.__table__)
_ALL = select(_C)


class Calibrations:
    def __init__(self, database: Database, clock: Clock = SYSTEM_CLOCK) -> None:
        self._db = database
        self._clock = clock
        self._rows: dict[str, TokenCalibration] = {}
        self._read_at: float | None = None
        self.output_seen: dict[str, int] = {}  # complete replies per model, to sample one in so many (chat/spend.py)

    async def get(self, model: str) -> TokenCalibration | None:
        if self._read_at is None or time.monotonic() - self._read_at > CALIBRATION_COPY_S:
            rows = await self._db.run(lambda conn: conn.execute(_ALL).all())
            self._rows = {row.model: TokenCalibration(**row._asdict()) for row in rows}
            self._read_at = time.monotonic()
        return self._rows.get(model)

    def added(self, model: str, estimated: int, reported: int) -> None:
        """Mirror a sample this process just committed (the next read brings in everyone else's)."""
        old = self._rows.get(model)
        self._rows[model] = TokenCalibration(
            model=model,
            samples=(old.samples if old else 0) + 1,
            estimated_tokens=(old.estimated_tokens if old else 0) + estimated,
            reported_tokens=(old.reported_tokens if old else 0) + reported,
            updated_at=self._clock.now(),
            output_samples=old.output_samples if old else 0,
            output_estimated_tokens=old.output_estimated_tokens if old else 0,
            output_reported_tokens=old.output_reported_tokens if old else 0,
        )

    async def add_output(self, model: str, estimated: int, reported: int) -> None:
        """Record one complete reply's output sample (its own transaction: samples are few, see chat/spend.py)."""
        now = self._clock.now()
        await self._db.run(
            lambda conn: add_output_calibration(conn, model, estimated, reported, now=now), write=True, background=True
        )
        old = self._rows.get(model)
        self._rows[model] = TokenCalibration(
            model=model,
            samples=old.samples if old else 0,
            estimated_tokens=old.estimated_tokens if old else 0,
            reported_tokens=old.reported_tokens if old else 0,
            updated_at=now,
            output_samples=(old.output_samples if old else 0) + 1,
            output_estimated_tokens=(old.output_estimated_tokens if old else 0) + estimated,
            output_reported_tokens=(old.output_reported_tokens if old else 0) + reported,
        )
