"""One `chat.send` and its streamed reply, as `GatewayClient.chat()` hands it out."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from .errors import ConflictError, GatewayClientError, error_from_frame
from .tool_desk import ToolDesk
from .tool_types import ApprovalRequest, Decision, StepEnd, ToolCall, ToolInputDelta, ToolResult
from .types import TERMINAL, ChatEnd, Delta, Frame

Event = Delta | ToolCall | ToolInputDelta | ApprovalRequest | ToolResult | StepEnd
_EVENTS: dict[str, Callable[[Frame], Event]] = {
    "chat.tool.call": ToolCall.from_frame,
    "chat.tool.approval": ApprovalRequest.from_frame,
    "chat.tool.result": ToolResult.from_frame,
    "chat.step.end": StepEnd.from_frame,
}


class StreamOwner(Protocol):
    """What a stream needs of the client that made it (GatewayClient); a protocol, so this module never imports the
    client's and the two stay free of a cycle."""

    async def _send_stream(self, stream: ChatStream) -> None: ...

    async def cancel(self, session_id: str | None = None, send_id: str | None = None) -> Frame: ...

    async def request(self, frame: Frame) -> Frame: ...


class ChatStream:
    """One `chat.send` and its reply. Iterate for text and thinking deltas (`async for delta in reply`), or for every
    event of a tool loop as well (`async for event in reply.events()`); afterwards `end` holds the end frame, and
    `tool_calls`, `tool_results` and `steps` what the turn did.

    The send goes out on first iteration (or `await start()`). An `error` terminal frame is raised as its typed
    exception from the iteration. A resent `idempotency_key` yields the stored reply's text once and sets `state`.
    Approvals and client tools are answered by the handlers given to `chat()` as their frames arrive, whether or not
    anyone iterates; without an approval handler, answer with `approve()`.
    """

    def __init__(self, client: StreamOwner, frame: Frame, desk: ToolDesk) -> None:
        self._client = client
        self._frame = frame
        self._desk = desk
        self.request_id: str = frame["id"]
        self.session_id: str | None = frame.get("sessionId")
        self.message_id: str | None = None  # the turn's latest reply (each step of a tool loop has its own)
        self.model: str | None = None
        self.session_created = False
        self.end: ChatEnd | None = None
        self.state: Frame | None = None
        self.error: GatewayClientError | None = None
        self.tool_calls: list[ToolCall] = []
        self.tool_results: list[ToolResult] = []
        self.steps: list[StepEnd] = []
        self._queue: asyncio.Queue[Event | Frame | GatewayClientError] = asyncio.Queue()
        self.compactions: list[Frame] = []  # `session.compacted`: the session was compacted before the reply
        self._started_event = asyncio.Event()  # the gateway named the session, or the stream is over
        self._sent = False
        self._done = False
        self._over = False  # the reader has seen the terminal frame (the iterator may not have reached it yet)

    @property
    def done(self) -> bool:
        return self._done

    async def start(self) -> None:
        if not self._sent:
            self._sent = True
            await self._client._send_stream(self)

    def _feed(self, item: Frame | GatewayClientError) -> None:
        """Called by the client's reader, in frame order, before the iterator sees the frame."""
        if isinstance(item, GatewayClientError):
            self._over = True
            self._started_event.set()
            self._desk.close()
            self._queue.put_nowait(item)
            return
        kind = item.get("type")
        if item.get("sessionId"):
            self.session_id = item["sessionId"]
        if isinstance(item.get("messageId"), str):
            self.message_id = item["messageId"]
        if kind == "session.compacted":
            self.compactions.append(item)
        if kind in ("chat.stream.start", *TERMINAL):
            self._started_event.set()
        if kind in TERMINAL:
            self._over = True
            self._desk.close()
        event = self._event(item)
        if event is None:
            self._queue.put_nowait(item)
            return
        if isinstance(event, ToolCall):
            self.tool_calls.append(event)
        elif isinstance(event, ToolResult):
            self.tool_results.append(event)
        elif isinstance(event, StepEnd):
            self.steps.append(event)
        self._desk.on_event(event)
        self._queue.put_nowait(event)

    @staticmethod
    def _event(frame: Frame) -> Event | None:
        kind = frame.get("type")
        if kind == "chat.stream.delta":
            return Delta("text", frame["delta"])
        if kind == "chat.stream.thinking":
            return Delta("thinking", frame["delta"])
        if kind == "chat.tool.input.delta":
            return ToolInputDelta(frame.get("toolUseId", ""), frame.get("name", ""), frame.get("delta", ""), frame)
        parse = _EVENTS.get(str(kind))
        return parse(frame) if parse is not None else None

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> Delta:
        while True:
            event = await self._next_event()
            if isinstance(event, Delta):
                return event

    def events(self) -> AsyncIterator[Event]:
        """Every event of the reply in order: `Delta`, `ToolCall`, `ToolInputDelta`, `ApprovalRequest`, `ToolResult`
        and `StepEnd`. Use it or the plain iteration, not both at once."""
        return _Events(self)

    async def _next_event(self) -> Event:
        if self._done:
            raise StopAsyncIteration
        await self.start()
        while True:
            item = await self._queue.get()
            if isinstance(item, GatewayClientError):
                self._finish(error=item)
                raise item
            if not isinstance(item, dict):
                return item
            kind = item.get("type")
            if kind == "session.created":
                self.session_created = True
            elif kind == "chat.stream.start":
                self.model = item.get("model")
            elif kind == "chat.stream.end":
                self.end = ChatEnd.from_frame(item)
                self._finish()
                raise StopAsyncIteration
            elif kind == "chat.state":
                self.state = item
                self._finish()
                if item.get("text"):
                    return Delta("text", item["text"])
                raise StopAsyncIteration
            elif kind == "error":
                error = error_from_frame(item)
                self._finish(error=error)
                raise error

    def _finish(self, error: GatewayClientError | None = None) -> None:
        self._done = True
        self.error = error
        self._started_event.set()

    async def text(self) -> str:
        """Iterate to the end; the answer's text (thinking left out)."""
        return "".join([d.text async for d in self if not d.is_thinking])

    async def approve(self, call: str | ApprovalRequest | ToolCall, decision: Decision) -> Frame:
        """Answer an approval request of this reply: `allow_once`, `allow_session` or `deny`. Raises `ConflictError`
        (APPROVAL_NOT_PENDING) when it was already answered or expired, `NotFoundError` for an unknown call."""
        tool_use_id = call if isinstance(call, str) else call.tool_use_id
        return await self._desk.approve(tool_use_id, decision, self.session_id)

    async def cancel(self) -> bool:
        """Stop this reply. True if it was cancelled, False if it had already ended."""
        await self.start()
        await self._started_event.wait()
        if self.session_id is None or self._over:
            return False
        try:
            await self._client.cancel(self.session_id, send_id=self.request_id)
        except ConflictError as exc:
            if exc.code == "NOTHING_TO_CANCEL":
                return False
            raise
        return True


class _Events:
    def __init__(self, stream: ChatStream) -> None:
        self._stream = stream

    def __aiter__(self) -> _Events:
        return self

    async def __anext__(self) -> Event:
        return await self._stream._next_event()
