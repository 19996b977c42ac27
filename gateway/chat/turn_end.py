"""The end of a model request, whatever ended it: price what the upstream reported and save the reply with its usage
row (through a database outage and a second cancellation; past the outage's retries, held until the database is
back: held.py). Also the end of a turn cancelled while its user turn was being written."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar, cast

from gateway import errors
from gateway.billing.accounting import Priced
from gateway.context.assembly import Assembled
from gateway.store import CancelledAfterCommit, TurnRows
from gateway.store.usage_row import UsageRow

from .reply import Reply
from .services import Services
from .spend import billed_usage, estimate_output
from .turn_frames import usage_record

log = logging.getLogger(__name__)
T = TypeVar("T")

# Waits between attempts to save a finished reply while the database is unreachable.
FINISH_RETRY_DELAYS_S = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

Hold = Callable[[Callable[[], Awaitable[None]]], None]


@dataclass(frozen=True, slots=True)
class Ending:
    """How the stream ended: `status` is what the reply and its usage row keep."""

    status: str
    failure: errors.GatewayError | None
    started: float  # time.monotonic() when the stream began
    first_token_ms: int | None
    sent_at: datetime  # when the upstream request that produced the reply was sent: its price's moment


@dataclass(frozen=True, slots=True)
class Accounted:
    """One model request's reply, priced, with the usage row and calibration sample to save with it."""

    priced: Priced | None
    record: UsageRow | None
    calibration: tuple[str, int, int] | None
    duration_ms: int
    saved: bool = True  # False: the database stayed unavailable; the save is held until it is back


def account(
    s: Services, rows: TurnRows, reply: Reply, assembled: Assembled, estimate: int, ending: Ending, step: int
) -> Accounted:
    duration_ms = int((time.monotonic() - ending.started) * 1000)
    if reply.message_id is None:
        return Accounted(None, None, None, duration_ms)  # nothing was billed
    usage, estimated = billed_usage(reply)
    priced = s.prices.price(assembled.model, usage, ending.sent_at, reply.server_tools)
    record = usage_record(
        rows, priced, ending.status, duration_ms, ending.first_token_ms, estimate, reply.message_id, ending.sent_at,
        step, reply.server_tools, usage_id=reply.usage_id, estimated=estimated,
    )  # fmt: skip
    calibration = None
    if ending.status == "complete" and reply.usage.prompt_tokens > 0:
        calibration = (assembled.model, estimate, reply.usage.prompt_tokens)
    return Accounted(priced, record, calibration, duration_ms)


async def settle(
    s: Services,
    rows: TurnRows,
    reply: Reply,
    assembled: Assembled,
    estimate: int,
    ending: Ending,
    step: int,
    hold: Hold,
) -> Accounted:
    """Save the turn's last reply (`rows.assistant_message`) however it ended, with its usage row. When the database
    stays unavailable past the retries, the save is given to `hold` and `saved` is False (the end frame then says
    `pendingSave: true`)."""
    status, failure = ending.status, ending.failure
    accounted = account(s, rows, reply, assembled, estimate, ending, step)
    stop_reason = reply.stop_reason if status == "complete" else status
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
            usage=accounted.record,
            calibration=accounted.calibration,
        )

    # Persisting must survive a second cancellation (shutdown while we save); the client may be gone already. On
    # SQLite the writer thread's transaction cannot be interrupted and a cancel is raised only once it has ended, so
    # the save is awaited directly: a shield adds three passes of a busy event loop to every end frame (issue 15).
    # PostgreSQL would roll the transaction back: there it runs shielded.
    persisting = saved_through_outage(save)
    saved = await (persisting if s.store.database.writes_in_order else asyncio.shield(persisting))
    if not saved:
        hold(save)
        return replace(accounted, saved=False)
    return accounted


async def write_begun(
    s: Services, begin: Coroutine[Any, Any, TurnRows], cancel_status: Callable[[], str], name: str
) -> TurnRows:
    """Write a turn's user message and empty reply (`begin`: ChatStore.begin_turn, or TranscriptStore.begin for the
    HTTP API). A cancel meanwhile does not cut the write short unjudged: it runs to its end, a reply it wrote is
    ended with `cancel_status()` (or it would stay `streaming` until the next send or a restart; issue 14: 11 of 2,000
    churned sends), and the cancel is raised as CancelledAfterCommit carrying the rows when they were written.

    On SQLite the write is awaited directly (the writer thread's transaction cannot be interrupted, and it reports a
    commit that outlived the cancel): the turn goes on one pass of the event loop after the commit, where a task of
    its own and a shield cost three (issue 15: under load, tens of milliseconds each before the first token). On
    PostgreSQL a cancel would roll the transaction back, so it runs in a task of its own, through a shield."""
    if s.store.database.writes_in_order:
        try:
            return await begin
        except CancelledAfterCommit as cancelled:
            await _end_reply_after_cancel(s, cast(TurnRows, cancelled.result), cancel_status())
            raise
    writing = asyncio.get_running_loop().create_task(begin, name=name)
    try:
        return await asyncio.shield(writing)
    except asyncio.CancelledError:
        rows = await _end_begun_after_cancel(s, writing, cancel_status())
        if rows is not None:
            raise CancelledAfterCommit(rows) from None
        raise


async def _end_begun_after_cancel(s: Services, writing: asyncio.Future[TurnRows], status: str) -> TurnRows | None:
    """A request was cancelled while `writing` wrote its user turn (or its HTTP exchange's messages) in a task of its
    own: let the write end, and end the empty reply it wrote with `status`. Returns the rows when they were written."""
    await unstoppable(writing)
    if writing.cancelled() or writing.exception() is not None:
        return None  # nothing was written
    rows = writing.result()
    await _end_reply_after_cancel(s, rows, status)
    return rows


async def _end_reply_after_cancel(s: Services, rows: TurnRows, status: str) -> None:
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
    await unstoppable(ending)
    if not ending.cancelled() and ending.exception() is not None:
        # The database failed just now: the reply stays `streaming` until the next send into the session (which holds
        # the lock and recovers it) or a restart marks it `interrupted`.
        log.warning("could not end reply %s after a cancel: %s", rows.assistant_message.id, ending.exception())


async def to_the_end(work: Coroutine[Any, Any, T]) -> T:
    """Run `work` to its end even if the caller is cancelled meanwhile; the cancel is raised once it has ended."""
    running = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        await unstoppable(running)
        raise


async def unstoppable(work: asyncio.Future[Any]) -> bool:
    """Wait for `work` to finish; a further cancel of the waiter must not leave it unjudged. Whether one came."""
    stopped = False
    while not work.done():
        try:
            await asyncio.wait({work})
        except asyncio.CancelledError:
            stopped = True
    return stopped


async def record_failed_attempt(
    s: Services, rows: TurnRows, reply: Reply, assembled: Assembled, at: datetime, started: float, step: int
) -> Priced | None:
    """An attempt that failed after the upstream reported usage was billed: its own usage row, before the retry."""
    if reply.message_id is None:
        return None  # the upstream reported no usage, so it billed nothing
    # Cut short before Anthropic's final count (a retried attempt relayed nothing, but may have generated a tool
    # call's input): billed for what it generated, like a turn's last request.
    await estimate_output(s, assembled.model, reply)
    usage, estimated = billed_usage(reply)
    priced = s.prices.price(assembled.model, usage, at, reply.server_tools)
    duration_ms = int((time.monotonic() - started) * 1000)
    record = usage_record(
        rows, priced, "failed", duration_ms, None, None, reply.message_id, at, step, reply.server_tools,
        usage_id=reply.usage_id, estimated=estimated,
    )  # fmt: skip
    await asyncio.shield(s.store.usage.insert(record))
    return priced


async def saved_through_outage(save: Callable[[], Awaitable[None]]) -> bool:
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
