"""The end of a turn's stream, whatever ended it: price what the upstream reported, save the reply with its usage row
(through a database outage and a second cancellation), observe, and build the one terminal frame."""

from __future__ import annotations

import asyncio
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
) -> dict[str, Any]:
    """Save the reply and account for it; returns the terminal frame (`chat.stream.end`, or the failure's error)."""
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
    # Persisting must survive a second cancellation (shutdown while we save); the client may be gone already.
    await asyncio.shield(
        _saved_through_outage(
            lambda: s.store.chats.finish_turn(
                message_id=rows.assistant_message.id,
                session_id=rows.session.id,
                content=reply.content(complete=status == "complete"),
                text=reply.text,
                status=status,
                stop_reason=stop_reason,
                error_code=failure.code if failure else None,
                usage=record,
                calibration=calibration,
            )
        )
    )
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
        return error_with(
            failure,
            rid,
            sessionId=rows.session.id,
            messageId=rows.assistant_message.id,
            partialText=reply.text,
        )
    return end_frame(rid, rows, stop_reason, priced, duration_ms, status)


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


async def _saved_through_outage(save: Callable[[], Awaitable[None]]) -> None:
    """The reply has been paid for: ride out a database restart or failover (about 16 s) rather than lose its usage
    row. finish_turn is safe to repeat, so a commit whose answer was lost is not counted twice."""
    for delay in (*FINISH_RETRY_DELAYS_S, None):
        try:
            await save()
            return
        except errors.DatabaseUnavailable as exc:
            if delay is None:
                raise
            log.warning("saving a finished reply failed (%s); retrying in %.2f s", exc, delay)
            await asyncio.sleep(delay)
