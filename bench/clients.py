"""One chat turn as each kind of client does it: over the WebSocket (gateway or bare relay), or straight to the
upstream through the `anthropic` SDK (the *direct* baseline). Each returns when its stream is over.

The WebSocket client is raw aiohttp: it parses each frame once and does nothing else, so it costs the same for the
gateway and the bare relay, and as little as a client can.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import anthropic
import httpx2

from .stats import Recorder

DELTA_TYPES = frozenset(("chat.stream.delta", "chat.stream.thinking"))
MODEL = "claude-sonnet-5-5"


class TurnFailed(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass
class Timing:
    sent: float
    first: float | None = None
    last: float = 0.0
    max_gap: float = 0.0
    deltas: int = 0

    def delta(self, now: float) -> None:
        if self.first is None:
            self.first = now
        else:
            self.max_gap = max(self.max_gap, now - self.last)
        self.last = now
        self.deltas += 1

    def end(self, now: float) -> None:
        if self.first is not None:
            self.max_gap = max(self.max_gap, now - self.last)


async def ws_turn(
    ws: aiohttp.ClientWebSocketResponse,
    rid: str,
    content: str,
    session_id: str | None,
    rec: Recorder | None,
    timeout_s: float,
) -> str | None:
    """Send one chat.send and read to its terminal frame; returns the session id the gateway gave (if any)."""
    frame: dict[str, Any] = {"type": "chat.send", "id": rid, "content": content}
    if session_id is not None:
        frame["sessionId"] = session_id
    timing = Timing(sent=time.perf_counter())
    await ws.send_str(json.dumps(frame))
    while True:
        msg = await ws.receive(timeout=timeout_s)
        now = time.perf_counter()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise TurnFailed(f"socket {msg.type.name}")
        data = json.loads(msg.data)
        kind = data["type"]
        if kind in DELTA_TYPES:
            timing.delta(now)
            if rec is not None:
                rec.delta(now)
        elif kind == "chat.stream.end":
            timing.end(now)
            if rec is not None:
                rec.turn_done(timing.sent, timing.first, now, timing.max_gap)
            found: str | None = data.get("sessionId", session_id)
            return found
        elif kind == "error":
            raise TurnFailed(str(data.get("code")))
        elif kind == "session.created":
            session_id = data["sessionId"]


async def ws_request(ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """One request and its one answer (queries and ping)."""
    await ws.send_str(json.dumps(frame))
    msg = await ws.receive(timeout=timeout_s)
    if msg.type != aiohttp.WSMsgType.TEXT:
        raise TurnFailed(f"socket {msg.type.name}")
    answer: dict[str, Any] = json.loads(msg.data)
    return answer


def sdk_timeout() -> httpx2.Timeout:
    """The gateway's own defaults (120 s between bytes, 10 s to connect): the SDK's 5 s connect timeout fails
    hundreds of simultaneous connects on a busy 2-core machine, which would measure the backlog, not the relay."""
    return httpx2.Timeout(120.0, connect=10.0)


def direct_client(base_url: str) -> anthropic.AsyncAnthropic:
    # As the gateway builds its own: no SDK retries, one pooled client shared by every stream.
    return anthropic.AsyncAnthropic(api_key="test", base_url=base_url, max_retries=0, timeout=sdk_timeout())


async def direct_turn(client: anthropic.AsyncAnthropic, content: str, rec: Recorder | None) -> None:
    timing = Timing(sent=time.perf_counter())
    stream = await client.messages.create(
        model=MODEL, max_tokens=8192, messages=[{"role": "user", "content": content}], stream=True
    )
    finished = False
    async for event in stream:
        if event.type == "content_block_delta" and event.delta.type in ("text_delta", "thinking_delta"):
            now = time.perf_counter()
            timing.delta(now)
            if rec is not None:
                rec.delta(now)
        elif event.type == "message_stop":
            finished = True
    now = time.perf_counter()
    if not finished:
        raise TurnFailed("TRUNCATED")
    timing.end(now)
    if rec is not None:
        rec.turn_done(timing.sent, timing.first, now, timing.max_gap)
