"""One `chat.send` and its streamed reply, as `GatewayClient.chat()` hands it out."""

from __future__ import annotations

import asyncio
from typing import Protocol

from .errors import ConflictError, GatewayClientError, error_from_frame
from .types import TERMINAL, ChatEnd, Delta, Frame


class StreamOwner(Protocol):
    """What a stream needs of the client that made it (GatewayClient); a protocol, so this module never imports the
    client's and the two stay free of a cycle."""

    async def _send_stream(self, stream: ChatStream) -> None: ...

    async def cancel(self, session_id: str | None = None, send_id: str | None = None) -> Frame: ...


class ChatStream:
    """One `chat.send` and its reply. Iterate for deltas; afterwards `end` holds the end frame.

    The send goes out on first iteration (or `await start()`). An `error` terminal frame is raised as its typed
    exception from the iteration. A resent `idempotency_key` yields the stored reply's text once and sets `state`.
    """

    def __init__(self, client: StreamOwner, frame: Frame) -> None:
        self._client = client
        self._frame = frame
        self.request_id: str = frame["id"]
        self.session_id: str | None = frame.get("sessionId")
        self.message_id: str | None = None
        self.model: str | None = None
        self.session_created = False
        self.end: ChatEnd | None = None
        self.state: Frame | None = None
        self.error: GatewayClientError | None = None
        self._queue: asyncio.Queue[Frame | GatewayClientError] = asyncio.Queue()
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
        if isinstance(item, dict):
            if item.get("sessionId"):
                self.session_id = item["sessionId"]
            if item.get("type") in TERMINAL:
                self._over = True
            if item.get("type") in ("chat.stream.start", *TERMINAL):
                self._started_event.set()
        else:
            self._over = True
            self._started_event.set()
        self._queue.put_nowait(item)

    def __aiter__(self) -> ChatStream:
        return self

    async def __anext__(self) -> Delta:
        if self._done:
            raise StopAsyncIteration
        await self.start()
        while True:
            item = await self._queue.get()
            if isinstance(item, GatewayClientError):
                self._finish(error=item)
                raise item
            kind = item.get("type")
            if kind == "chat.stream.delta":
                return Delta("text", item["delta"])
            if kind == "chat.stream.thinking":
                return Delta("thinking", item["delta"])
            if kind == "session.created":
                self.session_created = True
            elif kind == "chat.stream.start":
                self.message_id, self.model = item.get("messageId"), item.get("model")
            elif kind == "chat.stream.end":
                self.end = ChatEnd.from_frame(item)
                self._finish()
                raise StopAsyncIteration
            elif kind == "chat.state":
                self.state, self.message_id = item, item.get("messageId")
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
