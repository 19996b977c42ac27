"""No spend uncounted (docs/SQL.md, "Provisional and estimated rows").

- **A usage row from the first upstream event.** Each upstream request's row is written when its `message_start`
  arrives (which carries its input usage), as a provisional row (`status = 'streaming'`); every checkpoint updates
  it with what is known; the request's end makes it final, in place (same id, so the rollup's triggers move its
  sums rather than add them twice). A process killed mid-stream leaves the row counting what was known, and
  start-up recovery marks it `interrupted` (chat/recovery.py).
- **Output of a stream cut short, estimated.** Anthropic's final output count arrives in `message_delta`, at the end;
  a stream cut short before it (cancel, disconnect, shutdown, failure, crash) reported only message_start's (usually
  1). Anthropic bills what it generated, so the row counts the output tokens of the text, thinking and tool input
  actually generated: counted locally (tiktoken) and scaled per model by what Anthropic reported for complete
  replies (token_calibration.output_*). The row says so: `estimated`, `estimated_output_tokens`, `estimated_cost`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from datetime import datetime

from gateway.billing.accounting import TokenUsage
from gateway.context.tokens import TokenCounter
from gateway.store import TurnRows
from gateway.store.models import TokenCalibration
from gateway.store.usage_row import UsageRow

from .checkpoints import Checkpointer
from .passthrough_stream import Exchange
from .reply import Reply
from .services import Services
from .turn_frames import usage_record

log = logging.getLogger(__name__)

# Counting a complete reply's output costs CPU on every turn, so after a model's first samples only one complete
# reply in OUTPUT_SAMPLE_EVERY is counted for its calibration.
OUTPUT_SAMPLES_FIRST = 50
OUTPUT_SAMPLE_EVERY = 20
_background: set[asyncio.Task[None]] = set()


def generated_tokens(tokens: TokenCounter, reply: Reply) -> int:
    """Our count of what the reply generated so far; only what is new since the last count is counted."""
    if reply.counted < len(reply.generated):
        reply.counted_tokens += tokens.count_fresh("".join(reply.generated[reply.counted :]))
        reply.counted = len(reply.generated)
    return reply.counted_tokens


def calibrated(local: int, row: TokenCalibration | None) -> int:
    """Our count scaled by what Anthropic reported for this model's complete replies, rounded up."""
    if row is None or not row.output_samples or row.output_estimated_tokens <= 0:
        return local
    return -(-local * row.output_reported_tokens // row.output_estimated_tokens)


async def estimate_output(s: Services, model: str, reply: Reply) -> None:
    """A stream without Anthropic's final count: estimate its output tokens (`reply.estimated_output`)."""
    if reply.message_id is None or reply.usage_final:
        return
    reply.estimated_output = calibrated(generated_tokens(s.tokens, reply), await s.store.chats.calibration(model))


def billed_usage(reply: Reply) -> tuple[TokenUsage, int]:
    """The usage to price the request by, and how many of its output tokens are our estimate (0: all reported)."""
    estimate, reported = reply.estimated_output, reply.usage.output_tokens
    if reply.usage_final or estimate is None or estimate <= reported:
        return reply.usage, 0
    return dataclasses.replace(reply.usage, output_tokens=estimate), estimate - reported


def provisional_record(
    s: Services, rows: TurnRows, model: str, reply: Reply, sent_at: datetime, started: float, step: int | None
) -> UsageRow:
    """The request's row as known right now: status `streaming`, its id the one its final row will have."""
    usage, estimated = billed_usage(reply)
    priced = s.prices.price(model, usage, sent_at, reply.server_tools)
    duration_ms = int((time.monotonic() - started) * 1000)
    return usage_record(
        rows, priced, "streaming", duration_ms, None, None, reply.message_id, sent_at, step, reply.server_tools,
        usage_id=reply.usage_id, estimated=estimated,
    )  # fmt: skip


def sample_output(s: Services, model: str, reply: Reply) -> None:
    """A complete reply: now and then, our count of its output against Anthropic's, for the calibration. In the
    background: the reply's end frame does not wait for it."""
    calibrations = s.store.chats.calibrations
    seen = calibrations.output_seen[model] = calibrations.output_seen.get(model, 0) + 1
    if not reply.generated or reply.usage.output_tokens <= 0:
        return
    if seen > OUTPUT_SAMPLES_FIRST and seen % OUTPUT_SAMPLE_EVERY:
        return
    local = generated_tokens(s.tokens, reply)
    if local <= 0:
        return
    task = asyncio.create_task(_add_sample(s, model, local, reply.usage.output_tokens), name="output-calibration")
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _add_sample(s: Services, model: str, local: int, reported: int) -> None:
    try:
        await s.store.chats.calibrations.add_output(model, local, reported)
    except Exception as exc:  # a lost sample only slows the calibration down
        log.info("output calibration sample for %s not saved: %s", model, exc)


class LiveUsage:
    """The provisional row of a request streamed outside a turn's relay (the HTTP API's): begun at its first event
    (`begin`), updated on a checkpoint timer while chunks are relayed (`touch`), and `settled` before its final row
    is written, which then finds it."""

    def __init__(
        self, s: Services, rows: TurnRows, model: str, reply: Reply, sent_at: datetime, reservation_ids: tuple[str, ...]
    ) -> None:
        self.s, self.rows, self.model, self.reply, self.sent_at = s, rows, model, reply, sent_at
        self.reservation_ids = reservation_ids
        self.started = time.monotonic()
        self._begun: asyncio.Future[None] | None = None
        self._checkpoints = Checkpointer(self._checkpoint, s.settings.checkpoint_interval_s)

    @classmethod
    def following(
        cls, s: Services, rows: TurnRows, model: str, exchange: Exchange, sent_at: datetime, held: tuple[str, ...]
    ) -> LiveUsage:
        """The usage of an HTTP API exchange: begun at its first event, checkpointed as its chunks are relayed."""
        live = cls(s, rows, model, exchange.reply, sent_at, held)
        exchange.on_start, exchange.touch = live.begin, live.touch
        return live

    def begin(self) -> None:
        record = provisional_record(self.s, self.rows, self.model, self.reply, self.sent_at, self.started, None)
        reply = self.reply
        self._begun = asyncio.ensure_future(
            self.s.store.usage.begin(record, self.reservation_ids, lambda: not reply.ended)
        )
        self._checkpoints.start()

    def touch(self) -> None:
        self._checkpoints.touch()

    async def _checkpoint(self) -> None:
        await estimate_output(self.s, self.model, self.reply)
        record = provisional_record(self.s, self.rows, self.model, self.reply, self.sent_at, self.started, None)
        await self.s.store.usage.checkpoint(record)

    async def settled(self, *, complete: bool) -> None:
        await self._checkpoints.stop()
        self.reply.ended = True
        let_begun_go(self._begun)
        if complete:
            sample_output(self.s, self.model, self.reply)
        else:
            await estimate_output(self.s, self.model, self.reply)  # cut short: billed for what it generated


def let_begun_go(begun: asyncio.Future[None] | None) -> None:
    """The request has ended; its provisional row's write may still be under way, and nobody waits for it: the final
    row's write is an upsert that finds the provisional row or inserts the row itself (on PostgreSQL waiting, in the
    database, for a provisional insert not yet committed), and a provisional write reaching the database after the
    final one writes nothing. Under load the wait was most of an end frame's delay (issue 15). A failure is logged."""
    if begun is not None:
        begun.add_done_callback(_log_failed_begin)


def _log_failed_begin(begun: asyncio.Future[None]) -> None:
    if not begun.cancelled() and begun.exception() is not None:
        log.warning("provisional usage row not written: %s", begun.exception())
