"""The WebSocket edge below the JSON: every frame is judged by its header, before aiohttp buffers a byte of its payload.

aiohttp's reader checks a frame's declared length against one `max_msg_size` fixed when the socket opens, and buffers
the whole frame before anything else sees it. Measured (issue 14): 300 unauthenticated sockets each sending most of a
frame that claimed 5 MB took the process from 166 to 1,365 MiB. `FrameGuard` sits in front of that reader and reads
only frame headers (2 to 14 bytes), so it knows each frame's length as it starts and can:

- hold an unauthenticated socket to `preauth_bytes` in all (room for the `auth` frame), closing it with 1009 beyond;
- hold an authenticated one to the message limit (1009 beyond), as before;
- reserve every message's declared length from one `BufferBudget` for the whole process before its payload is read,
  and return it when the handler is done with the message; a socket whose message does not fit is closed with 1013
  (try again later), so all sockets together never hold more than `max_buffered_bytes` of unread messages;
- close a socket whose message is not complete `frame_timeout_s` after it started (1008): a dribbling sender holds
  neither memory nor a slot for long;
- count each message's bytes and note how many of the socket's earlier messages were still unanswered when it
  arrived, so the connection can tell a client that waits for its answers (never limited) from one that pipelines.

Frames are otherwise passed on untouched: aiohttp still parses, unmasks, checks and delivers them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import WebSocketError, WSCloseCode, web
from aiohttp.web_protocol import RequestHandler


class BufferBudget:
    """Bytes of WebSocket messages held in memory across all connections (reserved by declared length)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0

    def take(self, size: int) -> bool:
        if self.limit > 0 and self.used + size > self.limit:
            return False
        self.used += size
        self.peak = max(self.peak, self.used)
        return True

    def give(self, size: int) -> None:
        self.used = max(0, self.used - size)


@dataclass(frozen=True, slots=True)
class GuardLimits:
    preauth_bytes: int  # everything an unauthenticated socket may send
    message_bytes: int  # the largest message once authenticated
    frame_timeout_s: float  # from a message's first header to its last byte


@dataclass(frozen=True, slots=True)
class Arrival:
    """A complete data message as the guard saw it arrive."""

    size: int  # its declared bytes (reserved from the budget until `done`)
    unanswered: int  # the socket's earlier messages not yet handled when it arrived: 0 means the client waited


class FrameGuard:
    """Wraps aiohttp's WebSocket reader (the object the HTTP protocol feeds with socket data)."""

    def __init__(self, inner: Any, queue: Any, budget: BufferBudget, limits: GuardLimits, authenticated: bool) -> None:
        self._inner = inner
        self._queue = queue
        self._budget = budget
        self._limits = limits
        self.authenticated = authenticated
        self.bytes_received = 0
        self.frames_received = 0
        self._loop = asyncio.get_running_loop()
        self._head = bytearray()
        self._payload_left = 0
        self._control = False
        self._fin = False
        self._message_bytes = 0  # declared bytes of the message being received, over all its fragments
        self._reserved = 0  # everything this socket holds of the budget
        self._arrived = 0
        self._handled = 0
        self._arrivals: deque[Arrival] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._failed = False

    # The interface aiohttp's protocol calls.
    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._failed:
            return True, b""
        problem = self._scan(data)
        if problem is not None:
            self._fail(*problem)
            return True, b""
        result: tuple[bool, bytes] = self._inner.feed_data(data)
        return result

    def feed_eof(self) -> None:
        self._inner.feed_eof()

    # The interface the connection uses.
    def next_arrival(self) -> Arrival:
        """The next complete message the handler reads (messages are delivered in the order they arrived)."""
        return self._arrivals.popleft() if self._arrivals else Arrival(0, 0)

    def done(self, arrival: Arrival) -> None:
        """The handler has answered the message: its bytes go back to the budget."""
        self._handled += 1
        self._release(arrival.size)

    def close(self) -> None:
        """The socket is gone: return everything it still held."""
        self._cancel_timer()
        self._release(self._reserved)
        self._arrivals.clear()

    def observe(self, data: bytes) -> None:
        """Bytes aiohttp's reader was given before the guard was in place (sent with the upgrade request)."""
        problem = self._scan(data)
        if problem is not None:
            self._fail(*problem)

    def _scan(self, data: bytes) -> tuple[int, str] | None:
        self.bytes_received += len(data)
        if not self.authenticated and self.bytes_received > self._limits.preauth_bytes:
            return WSCloseCode.MESSAGE_TOO_BIG, f"authenticate first: at most {self._limits.preauth_bytes} bytes before"
        pos, end = 0, len(data)
        while pos < end:
            if self._payload_left:
                step = min(self._payload_left, end - pos)
                self._payload_left -= step
                pos += step
                if not self._payload_left:
                    self._frame_done()
                continue
            step = min(self._header_size() - len(self._head), end - pos)
            self._head += data[pos : pos + step]
            pos += step
            if len(self._head) < self._header_size():
                continue
            problem = self._frame_started()
            self._head.clear()
            if problem is not None:
                return problem
            if not self._payload_left:
                self._frame_done()
        return None

    def _header_size(self) -> int:
        if len(self._head) < 2:
            return 2
        second = self._head[1]
        length = second & 0x7F
        return 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if second & 0x80 else 0)

    def _frame_started(self) -> tuple[int, str] | None:
        first, second = self._head[0], self._head[1]
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(self._head[2:4], "big")
        elif length == 127:
            length = int.from_bytes(self._head[2:10], "big")
        self._payload_left = length
        self._control = bool(first & 0x08)  # ping, pong, close: at most 125 bytes, checked by aiohttp
        if self._control:
            return None
        self._fin = bool(first & 0x80)
        self.frames_received += 1
        limit = self._limits.message_bytes if self.authenticated else self._limits.preauth_bytes
        if self._message_bytes + length > limit:
            return WSCloseCode.MESSAGE_TOO_BIG, f"message larger than {limit} bytes"
        if not self._budget.take(length):
            return WSCloseCode.TRY_AGAIN_LATER, "the gateway holds too much unread data; reconnect and retry"
        self._reserved += length
        if self._message_bytes == 0 and self._timer is None and self._limits.frame_timeout_s > 0:
            self._timer = self._loop.call_later(self._limits.frame_timeout_s, self._expired)
        self._message_bytes += length
        return None

    def _frame_done(self) -> None:
        if self._control or not self._fin:
            return
        self._arrivals.append(Arrival(self._message_bytes, self._arrived - self._handled))
        self._arrived += 1
        self._message_bytes = 0
        self._cancel_timer()

    def _expired(self) -> None:
        self._timer = None
        self._fail(WSCloseCode.POLICY_VIOLATION, f"a message was not completed within {self._limits.frame_timeout_s} s")

    def _fail(self, code: int, reason: str) -> None:
        """As aiohttp's reader fails: the handler's next receive() gets the error, and aiohttp closes with `code`."""
        self._failed = True
        self._cancel_timer()
        self._queue.set_exception(WebSocketError(code, reason))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _release(self, size: int) -> None:
        size = min(size, self._reserved)
        self._reserved -= size
        self._budget.give(size)


class GuardedWebSocketResponse(web.WebSocketResponse):
    """A WebSocketResponse whose reader is wrapped in a FrameGuard from the moment it exists."""

    def __init__(self, *, budget: BufferBudget, limits: GuardLimits, authenticated: bool, **kwargs: Any) -> None:
        super().__init__(max_msg_size=limits.message_bytes, **kwargs)
        self._guard_args = (budget, limits, authenticated)
        self.guard: FrameGuard | None = None

    def _post_start(self, request: Any, protocol: Any, writer: Any) -> None:
        handler: RequestHandler = request.protocol
        # What arrived with the upgrade request is fed to aiohttp's reader inside _post_start: scan it too.
        early = bytes(handler._message_tail)
        super()._post_start(request, protocol, writer)
        self.guard = FrameGuard(handler._payload_parser, self._reader, *self._guard_args)
        self.guard.observe(early)
        handler._payload_parser = self.guard


def check_aiohttp_supports_guard() -> None:
    """The guard relies on three aiohttp internals; refuse to start on a version without them rather than run
    without the protection."""
    slots = set(getattr(RequestHandler, "__slots__", ()))
    missing = [
        name
        for name, present in (
            ("RequestHandler._payload_parser", "_payload_parser" in slots),
            ("RequestHandler._message_tail", "_message_tail" in slots),
            ("WebSocketResponse._post_start", hasattr(web.WebSocketResponse, "_post_start")),
        )
        if not present
    ]
    if missing:
        raise RuntimeError(f"this aiohttp version lacks {', '.join(missing)}, which the gateway's frame guard needs")
