"""One model request of a turn: streamed to the client through the relay, checkpointed, and ended however it ends
(complete, cancelled, disconnected, failed, timed out). And what the tool loop needs of its turn."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway import errors
from gateway.context.assembly import Assembled
from gateway.context.workspace import Workspace
from gateway.protocol import Request, RequestId
from gateway.store import HistoryItem, TurnRows
from gateway.tools.base import Toolbox

from .checkpoints import Checkpointer
from .metrics import TurnObserver
from .relay import Relay, SendRaw
from .services import Services
from .spend import estimate_output, sample_output
from .turn_end import Ending, Hold, unstoppable

# Why a stream or a tool phase was cut short -> the status the turn ends with.
CANCEL_STATUS = {"cancelled": "cancelled", "client_gone": "disconnected", "shutdown": "interrupted"}


@dataclass(frozen=True, slots=True)
class TurnContext:
    """What the turn was assembled from, for its later requests."""

    workspace: Workspace
    toolbox: Toolbox
    history: list[HistoryItem]  # the session's messages before this turn's user message
    max_tokens: int


class Turn(Protocol):
    """What the loop needs of its turn (chat.turn.Turn), named here so the two modules import one way."""

    s: Services
    request: Request
    ctx: TurnContext | None
    obs: TurnObserver
    send: Callable[[dict[str, Any]], Awaitable[None]]
    send_raw: SendRaw
    cancel_reason: str | None
    phase: str
    first_reply_id: str

    @property
    def rid(self) -> RequestId: ...
    def connected(self) -> bool: ...
    async def announce(self, rows: TurnRows, model: str) -> None: ...
    async def release_budget(self) -> None: ...
    def reservation_ids(self) -> tuple[str, ...]: ...
    def holder(self, rows: TurnRows) -> Hold: ...
    async def check_window(self, model: str, estimate: int) -> None: ...
    async def reserve_budget(self, workspace: Workspace, model: str, estimate: int, max_tokens: int) -> None: ...


async def stream_request(turn: Turn, rows: TurnRows, assembled: Assembled, step: int) -> tuple[Ending, Relay]:
    """One model request: relayed, checkpointed, and ended (complete, cancelled, failed) with its Ending."""
    s = turn.s
    turn.phase = "streaming"
    started = time.monotonic()
    stream_input = bool(turn.request.get("streamToolInput"))
    relay = Relay(s, turn.obs, rows, assembled, turn.rid, turn.send_raw, started, step=step,
                  stream_tool_input=stream_input, reservation_ids=turn.reservation_ids())  # fmt: skip
    message_id = rows.assistant_message.id

    async def save_partial() -> None:
        usage = await relay.provisional()  # the usage row follows the text: a crash leaves both as of now
        await s.store.chats.checkpoint(message_id, relay.reply.content(complete=False), relay.reply.text, usage)

    checkpointer = Checkpointer(save_partial, s.settings.checkpoint_interval_s)
    failure: errors.GatewayError | None = None
    status = "complete"
    if step > 1 and not turn.connected() and s.settings.on_disconnect != "finish":
        return Ending("disconnected", None, started, None, relay.sent_at), relay  # its client left: ask nothing more
    try:
        async with asyncio.timeout(s.settings.upstream_total_timeout_s):
            if step == 1:
                await turn.announce(rows, assembled.model)
            checkpointer.start()
            await relay.run(checkpointer.touch)
    except asyncio.CancelledError:
        status = CANCEL_STATUS.get(turn.cancel_reason or "cancelled", "cancelled")
        _uncancel()
    except errors.GatewayError as exc:
        failure, status = exc, "failed"
    except TimeoutError:
        failure = errors.UpstreamTimeout("the request took longer than the total upstream timeout")
        status = "failed"
    if status == "complete":
        # The reply is whole and paid for: a stop landing now (shutdown, a late chat.cancel) must not turn it into a
        # CANCELLED error with nothing saved. It is saved whole, with the status that says the turn was stopped (so a
        # tool loop goes no further).
        if not checkpointer.saving:
            # Nothing in _completed waits then: run inline, not as a task, which under load would cost the end frame
            # two passes of a busy event loop (issue 15). A stop requested meanwhile is taken here.
            await _completed(s, checkpointer, relay, assembled.model)
            stopped = await _stop_requested()
        else:
            stopped = await unstoppable(asyncio.ensure_future(_completed(s, checkpointer, relay, assembled.model)))
        if stopped:
            status = CANCEL_STATUS.get(turn.cancel_reason or "cancelled", "cancelled")
            _uncancel()
    else:
        # Cut short: billed for what it generated. The turn ends here whatever comes, so a second cancel (shutdown
        # after a cancel) must not stop it before its reply is saved.
        await unstoppable(asyncio.ensure_future(_cut_short(s, checkpointer, relay, assembled.model)))
    return Ending(status, failure, started, relay.first_token_ms, relay.sent_at), relay


async def _completed(s: Services, checkpointer: Checkpointer, relay: Relay, model: str) -> None:
    await checkpointer.stop()
    relay.usage_ended()
    sample_output(s, model, relay.reply)


async def _cut_short(s: Services, checkpointer: Checkpointer, relay: Relay, model: str) -> None:
    await checkpointer.stop()
    relay.usage_ended()
    await estimate_output(s, model, relay.reply)


async def _stop_requested() -> bool:
    """Whether this task has a cancel pending, taken now (Python 3.11 would deliver it at the next await anyway)."""
    task = asyncio.current_task()
    if task is None or not task.cancelling():
        return False
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        return True
    return False


def _uncancel() -> None:
    """We handled the cancellation (the partial reply is saved next); later awaits and timeouts must work normally."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
