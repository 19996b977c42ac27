"""The end of a turn's stream, whatever ended it: price what the upstream reported, save the reply with its usage row
(through a database outage and a second cancellation), observe, and build the one terminal frame."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway import errors
from gateway.billing.accounting import Priced
from gateway.context.assembly import Assembled
from gateway.protocol import RequestId
from gateway.store import TurnRows
from gateway.store.models import UsageRecord

from .metrics import TurnObserver
from .services import Services
from .turn_frames import end_frame, error_with, usage_record
from .upstream import Reply

log = logging.getLogger(__name__)

# Waits between attempts to save a finished reply while the database is unreachable.
FINISH_RETRY_DELAYS_S = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True, slots=True)
class Ending:
    """How the stream ended: `status` is what the reply and its usage row keep."""

    status: str
    failure: errors.GatewayError | None
    started: float  # time.monotonic() when the stream began
    first_token_ms: int | None
    sent_at: datetime  # when the upstream request that produced the reply was sent: its price's moment


async def settle(
    s: Services,
    obs: TurnObserver,
    rid: RequestId,
    rows: TurnRows,
    reply: Reply,
    assembled: Assembled,
    estimate: int,
    ending: Ending,
    hold: Callable[[Callable[[], Awaitable[None]]], None],
) -> dict[str, Any]:
    """Save the reply and account for it; returns the terminal frame (`chat.stream.end`, or the failure's error).

    When the database stays unavailable past the retries, the save is given to `hold` (held.py) and the frame says
    `pendingSave: true`."""
    status, failure = ending.status, ending.failure
    duration_ms = int((time.monotonic() - ending.started) * 1000)
    priced: Priced | None = None
    record: UsageRecord | None = None
    if reply.message_id is not None:
        priced = s.prices.price(assembled.model, reply.usage, ending.sent_at)
        record = usage_record(
            rows, priced, status, duration_ms, ending.first_token_ms, estimate, reply.message_id, ending.sent_at
        )
    stop_reason = reply.stop_reason if status == "complete" else status
    calibration = None
    if status == "complete" and reply.usage.prompt_tokens > 0:
        calibration = (assembled.model, estimate, reply.usage.prompt_tokens)
    content = reply.content(complete=status == "complete")

    async def save() -> None:
        await s.store.chats.finish_turn(
            message_id=rows.assistant_message.id,
            session_id=rows.session.id,
            content=content,
            text=reply.text,
            status=status,
            stop_reason=stop_reason,
            error_code=failure.code if failure else None,
            usage=record,
            calibration=calibration,
        )

    # Persisting must survive a second cancellation (shutdown while we save); the client may be gone already.
    saved = await asyncio.shield(_saved_through_outage(save))
    if not saved:
        hold(save)
    obs.finished(
        session_id=rows.session.id,
        message_id=rows.assistant_message.id,
        agent_id=rows.session.agent_id,
        model=assembled.model,
        status=status,
        stop_reason=stop_reason,
        usage=reply.usage if reply.message_id is not None else None,
        cost_nano=priced.cost.total if priced is not None and priced.cost is not None else None,
        duration_ms=duration_ms,
        error_code=failure.code if failure else None,
    )
    if failure is not None:
        frame = error_with(
            failure,
            rid,
            sessionId=rows.session.id,
            messageId=rows.assistant_message.id,
            partialText=reply.text,
        )
    else:
        frame = end_frame(rid, rows, stop_reason, priced, duration_ms, status)
    if not saved:
        frame["pendingSave"] = True
    return frame


async def end_begun_after_cancel(s: Services, writing: asyncio.Future[TurnRows], status: str) -> TurnRows | None:
    """A turn was cancelled while its user turn was being written. The write runs to its end regardless (a commit may
    be under way, and SQLite's thread cannot be interrupted); if it wrote the rows, the empty reply is ended here with
    `status`, or it would stay `streaming` until the next send or a restart (issue 14: 11 of 2,000 churned sends).
    Returns the rows when they were written."""
    await _unstoppable(writing)
    if writing.cancelled() or writing.exception() is not None:
        return None  # nothing was written
    rows = writing.result()
    ending = asyncio.ensure_future(
        s.store.chats.finish_turn(
            message_id=rows.assistant_message.id,
            session_id=rows.session.id,
            content=[],
            text="",
            status=status,
            stop_reason=status,
            error_code=None,
            usage=None,
        )
    )
    await _unstoppable(ending)
    if not ending.cancelled() and ending.exception() is not None:
        # The database failed just now: the reply stays `streaming` until the next send into the session (which holds
        # the lock and recovers it) or a restart marks it `interrupted`.
        log.warning("could not end reply %s after a cancel: %s", rows.assistant_message.id, ending.exception())
    return rows


async def _unstoppable(work: asyncio.Future[Any]) -> None:
    """Wait for `work` to finish; a further cancel of the waiter must not leave it unjudged."""
    while not work.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait({work})


async def record_failed_attempt(
    s: Services, rows: TurnRows, reply: Reply, assembled: Assembled, at: datetime, started: float
) -> None:
    """An attempt that failed after the upstream reported usage was billed: its own usage row, before the retry."""
    if reply.message_id is None:
        return  # the upstream reported no usage, so it billed nothing
    priced = s.prices.price(assembled.model, reply.usage, at)
    duration_ms = int((time.monotonic() - started) * 1000)
    record = usage_record(rows, priced, "failed", duration_ms, None, None, reply.message_id, at)
    await asyncio.shield(s.store.usage.insert(record))


async def _saved_through_outage(save: Callable[[], Awaitable[None]]) -> bool:
    """The reply has been paid for: ride out a database restart or failover (about 16 s) rather than lose its usage
    row; False if the database is still unavailable after that. finish_turn is safe to repeat, so a commit whose
    answer was lost is not counted twice."""
    for delay in (*FINISH_RETRY_DELAYS_S, None):
        try:
            await save()
            return True
        except errors.DatabaseUnavailable as exc:
            if delay is None:
                log.warning("saving a finished reply failed (%s); holding it until the database is back", exc)
                return False
            log.warning("saving a finished reply failed (%s); retrying in %.2f s", exc, delay)
            await asyncio.sleep(delay)
    return False
