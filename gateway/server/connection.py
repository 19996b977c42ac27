"""Per-socket state: authentication, the one writer, pacing of pipelined frames, the running turn, and dispatch."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway import errors
from gateway.chat.compact_job import CompactJob
from gateway.chat.services import Services
from gateway.chat.turn import Turn
from gateway.protocol import Request, RequestId, dump, error_frame, parse_frame
from gateway.store.models import ApiKey

from . import queries, tool_queries
from .credentials import Credentials, token_ok
from .frame_guard import Arrival, FrameGuard
from .pacing import Pacer

__all__ = ["Connection", "token_ok"]  # token_ok: where tests and older callers import it from

log = logging.getLogger(__name__)

Query = Callable[[Services, Request], Awaitable[dict[str, Any]]]

QUERIES: dict[str, Query] = {
    "session.list": queries.session_list,
    "session.history": queries.session_history,
    "session.delete": queries.session_delete,
    "usage.query": queries.usage_query,
    "context.inspect": queries.context_inspect,
    "session.pending": tool_queries.session_pending,
    "agent.list": queries.agent_list,
}


def with_request_id(frame: dict[str, Any]) -> dict[str, Any]:
    """Every answer also names its request as `requestId` (equal to `id`): the original AgentSpace protocol's field,
    which its clients match answers on."""
    if "id" in frame and "requestId" not in frame:
        frame["requestId"] = frame["id"]
    return frame


# A refused frame is read only when this small (for its `id`, and to let `chat.cancel` through): reading a large one
# would spend what refusing it is meant to save.
PEEK_CHARS = 64 * 1024


def _too_fast(wait_s: float) -> errors.RateLimited:
    return errors.RateLimited(
        "too many requests sent before their answers; wait for answers, or retry after retryAfter seconds",
        retryAfter=round(wait_s + 0.0005, 3),
    )


class Connection:
    def __init__(
        self,
        ws: web.WebSocketResponse,
        services: Services,
        *,
        authenticated: bool,
        credentials: Credentials | None = None,
        key: ApiKey | None = None,
        guard: FrameGuard | None = None,
    ) -> None:
        self.ws = ws
        self.s = services
        self.authenticated = authenticated
        self.credentials = credentials or Credentials(services.settings.token, services.store.keys)
        self.key = key  # the named gateway key this connection authenticated with, if any
        self.gone = False
        self.turn: Turn | CompactJob | None = None  # the one stream (or compaction) this connection runs
        self.turn_task: asyncio.Task[None] | None = None
        self._guard = guard
        self._write_lock = asyncio.Lock()
        settings = services.settings
        self._pacer = Pacer(
            settings.frames_per_second, settings.frame_burst, settings.bytes_per_second, settings.byte_burst
        )

    async def send(self, frame: dict[str, Any]) -> None:
        await self.send_raw(dump(with_request_id(frame)))

    async def send_raw(self, text: str) -> None:
        """The only place that writes to the socket. Awaiting the write gives a slow reader backpressure on its
        own stream; a vanished peer just marks the connection gone (the turn still saves what it has)."""
        if self.gone:
            return
        try:
            async with self._write_lock:
                await self.ws.send_str(text)
        except (ConnectionError, RuntimeError) as exc:
            log.debug("write to closed connection: %s", exc)
            self.gone = True

    async def handle_frame(self, data: str | bytes, arrival: Arrival) -> None:
        """One data frame, as the socket delivered it; `arrival` is what the frame guard saw of it."""
        if not self.authenticated:
            await self._first_frame(data)
            return
        try:
            await self._handle_paced(data, arrival)
        finally:
            pause = self._pacer.pause_after(arrival)
        if pause > 0:
            # Not read meanwhile: the client's own socket fills and TCP slows it (see pacing.py).
            await asyncio.sleep(pause)

    async def _handle_paced(self, data: str | bytes, arrival: Arrival) -> None:
        wait = self._pacer.admit(arrival)
        if wait is not None:
            await self._refuse(data, wait)
        elif arrival.size > self.s.settings.max_frame_bytes:
            too_large = f"frame is {arrival.size} bytes; the limit is {self.s.settings.max_frame_bytes}"
            await self.send(error_frame(errors.MessageTooLarge(too_large), None))
        elif isinstance(data, bytes):
            await self.send(error_frame(errors.InvalidMessage("binary frames are not accepted; send JSON text"), None))
        else:
            await self.handle_text(data)

    async def handle_text(self, text: str) -> None:
        try:
            request = parse_frame(text, max_content_chars=self.s.settings.max_content_chars)
        except errors.GatewayError as exc:
            await self.send(error_frame(exc, exc.details.get("request_id")))
            return
        try:
            await self.dispatch(request)
        except errors.GatewayError as exc:
            await self.send(error_frame(exc, request.id))
        except Exception as exc:
            log.exception("request %s failed", request.type)
            await self.send(error_frame(errors.InternalError(f"internal error: {type(exc).__name__}"), request.id))

    async def _refuse(self, data: str | bytes, wait_s: float) -> None:
        """A pipelined frame over the budget: answered unread, unless it is a small `chat.cancel`."""
        rid: RequestId = None
        if isinstance(data, str) and len(data) <= PEEK_CHARS:
            try:
                request = parse_frame(data, max_content_chars=self.s.settings.max_content_chars)
            except errors.GatewayError as exc:
                rid = exc.details.get("request_id")
            else:
                if request.type == "chat.cancel":
                    await self.handle_text(data)  # always accepted: stopping spend must never wait
                    return
                rid = request.id
        await self.send(error_frame(_too_fast(wait_s), rid))

    async def _first_frame(self, data: str | bytes) -> None:
        """Before authentication exactly one frame is read, and anything but a good `auth` is UNAUTHORIZED."""
        rid: RequestId = None
        try:
            if isinstance(data, bytes):
                raise errors.Unauthorized("the first frame must be an `auth` frame (JSON text)")
            request = parse_frame(data, max_content_chars=self.s.settings.max_content_chars)
            rid = request.id
            if request.type != "auth":
                raise errors.Unauthorized("send an `auth` frame with the gateway token first")
            await self._auth(request)
        except errors.Unauthorized as exc:
            await self.send(error_frame(exc, rid))
        except errors.GatewayError as exc:
            rid = exc.details.get("request_id")
            refused = errors.Unauthorized(f"the first frame must be a valid `auth` frame; this one: {exc.message}")
            await self.send(error_frame(refused, rid))

    async def dispatch(self, request: Request) -> None:
        if request.type == "auth":
            await self._auth(request)
            return
        if not self.authenticated:
            raise errors.Unauthorized("send an `auth` frame with the gateway token first")
        if request.type in ("chat.send", "session.compact"):
            self._start_turn(request)
        elif request.type == "chat.cancel":
            await self._cancel(request)
        elif request.type == "chat.tool.approve":
            frame, call = await tool_queries.tool_approve(self.s, request)
            self._adopt(call.session_id)
            await self.send({"id": request.id, **frame})
        elif request.type == "chat.tool.result":
            await self.send({"id": request.id, **tool_queries.client_result(self.s, request)})
        elif request.type == "ping":
            await self.send({"type": "pong", "id": request.id})
        else:
            reply = await QUERIES[request.type](self.s, request)
            await self.send({"type": reply["type"], "id": request.id, **reply})

    async def _auth(self, request: Request) -> None:
        verdict = await self.credentials.check(request.get("token"))
        if not verdict.accepted:
            raise errors.Unauthorized(verdict.reason)
        self.authenticated = True
        if self._guard is not None:
            self._guard.authenticated = True  # from now on frames up to the full size are read
        self.key = verdict.key or self.key
        await self.send({"type": "auth.ok", "id": request.id})

    def _start_turn(self, request: Request) -> None:
        # Busy until the terminal frame is sent, not until the task returns: the client may answer that frame
        # before the task has finished returning.
        if self.turn is not None and not self.turn.over and self.turn_task is not None and not self.turn_task.done():
            raise errors.StreamInProgress(
                "a reply is already streaming on this connection; wait for it or send chat.cancel",
                sessionId=self.turn.session_id,
            )
        if request.type == "session.compact":
            self.turn = CompactJob(self.s, request, self.send, self.key)
        else:
            self.turn = Turn(self.s, request, self.send, self.send_raw, self.key)
        self.turn_task = self.turn.task = asyncio.create_task(self.turn.run(), name=f"turn-{request.id}")
        self.s.active_turns.add(self)

    def _adopt(self, session_id: str) -> None:
        """A client answering an approval of a turn whose own client left takes over that turn's frames (and can
        cancel it), unless it is busy with a turn of its own."""
        turn = self.s.live_turns.get(session_id)
        busy = self.turn is not None and not self.turn.over and self.turn_task is not None and not self.turn_task.done()
        if turn is None or not turn.detached or busy or turn.task is None:
            return
        turn.attach(self.send, self.send_raw)
        self.turn, self.turn_task = turn, turn.task
        self.s.active_turns.add(self)

    async def _cancel(self, request: Request) -> None:
        session_id: str = request.get("sessionId")
        send_id = request.get("sendId")
        turn, task = self.turn, self.turn_task
        orphan = self.s.live_turns.get(session_id)
        if orphan is not None and orphan.detached and (turn is None or turn.over or turn.session_id != session_id):
            # A turn whose client left while it waited on tools or an approval: whoever reconnects may end it.
            turn, task = orphan, orphan.task
        if (
            turn is None
            or task is None
            or task.done()
            or turn.over
            or (turn.session_id is not None and turn.session_id != session_id)
            or (send_id is not None and send_id != turn.rid)
        ):
            raise errors.NothingToCancel(
                f"nothing is streaming in session {session_id} on this connection", sessionId=session_id
            )
        await self.stop_turn("cancelled", turn, task)
        await self.send({"type": "chat.cancelled", "id": request.id, "sessionId": session_id})

    async def stop_turn(
        self, reason: str, turn: Turn | CompactJob | None = None, task: asyncio.Task[None] | None = None
    ) -> None:
        """Cancel the running turn and wait until it has saved its partial reply and sent its terminal frame."""
        if turn is None:
            turn, task = self.turn, self.turn_task
        if turn is None or task is None or task.done():
            return
        turn.cancel_reason = reason
        if inspect.getcoroutinestate(task.get_coro()) == inspect.CORO_CREATED:  # type: ignore[arg-type]
            # Not started yet (its chat.send and this frame came in one read): a task cancelled before its first step
            # ends without running a line of it, so without its terminal frame. Cancel it once it has started.
            task.get_loop().call_soon(task.cancel)
        else:
            task.cancel()
        # asyncio.wait, not gather: if our caller is cancelled too, the turn must still finish saving, not be
        # cancelled a second time in the middle of it.
        await asyncio.wait({task})

    async def close(self) -> None:
        """The socket is gone: cancel the stream (or let it finish, if so configured), then forget it."""
        self.gone = True
        task = self.turn_task
        try:
            if task is not None and not task.done() and self.turn is not None and self.turn.phase == "tools":
                # Waiting on tools or an approval: the turn goes on without a client (a reconnecting one can still
                # answer, or cancel it); it ends before its next model request if no one has come back by then.
                self.turn.detach()
            elif task is not None and not task.done():
                if self.s.settings.on_disconnect == "finish":
                    await asyncio.wait({task})
                else:
                    await self.stop_turn("client_gone")
        finally:
            # The handler itself may be cancelled when its socket drops (aiohttp's handler_cancellation); the turn
            # then runs on by itself and is forgotten when it ends.
            if task is not None and not task.done():
                task.add_done_callback(lambda _: self.s.active_turns.discard(self))
            else:
                self.s.active_turns.discard(self)
