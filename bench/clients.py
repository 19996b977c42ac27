"""One chat turn as each kind of client does it: over the WebSocket with `gateway.client` (gateway or bare relay), or
straight to the upstream through the `anthropic` SDK (the *direct* baseline). Each returns when its stream is over.

`gateway.client` costs the load generator no more CPU per delta than a hand-rolled aiohttp loop (measured: about
the same microseconds per delta, either way), and it is what users' programs use.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx2

from gateway.client import GatewayClient, GatewayClientError

from .stats import Recorder

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
    gw: GatewayClient, content: str, session_id: str | None, rec: Recorder | None, timeout_s: float
) -> str | None:
    """One chat.send read to its terminal frame; returns the session the reply went to (new or continued)."""
    timing = Timing(sent=time.perf_counter())
    stream = gw.chat(content, session_id=session_id)
    try:
        async with asyncio.timeout(timeout_s):
            async for _ in stream:
                now = time.perf_counter()
                timing.delta(now)
                if rec is not None:
                    rec.delta(now)
    except GatewayClientError as exc:
        raise TurnFailed(exc.code) from exc
    except TimeoutError:
        raise TurnFailed("TIMEOUT") from None
    now = time.perf_counter()
    timing.end(now)
    if rec is not None:
        rec.turn_done(timing.sent, timing.first, now, timing.max_gap, timing.last if timing.first is not None else None)
    return stream.session_id


async def ws_request(gw: GatewayClient, frame: dict[str, Any]) -> dict[str, Any]:
    """One request and its one answer (queries and ping); an error answer raises TurnFailed with its code."""
    try:
        return await gw.request(frame)
    except GatewayClientError as exc:
        raise TurnFailed(exc.code) from exc


def sdk_timeout() -> httpx2.Timeout:
    """The gateway's own defaults (120 s between bytes, 10 s to connect): the SDK's 5 s connect timeout fails
    hundreds of simultaneous connects on a busy 2-core machine, which would measure the backlog, not the relay."""
    return httpx2.Timeout(120.0, connect=10.0)


def direct_client(base_url: str) -> anthropic.AsyncAnthropic:
    # As the gateway builds its own: no SDK retries, the SDK's aiohttp transport, one pooled client shared by every
    # stream. (With the SDK's default transport, direct requests would cost the client more than the gateway's own
    # upstream requests cost it, and flatter "added" latency.)
    timeout = sdk_timeout()
    http_client = anthropic.DefaultAioHttpClient(timeout=timeout)
    return anthropic.AsyncAnthropic(
        api_key="test", base_url=base_url, max_retries=0, timeout=timeout, http_client=http_client
    )


async def direct_turn(
    client: anthropic.AsyncAnthropic, content: str, rec: Recorder | None, history: list[dict[str, Any]] | None = None
) -> None:
    """One request straight to the upstream. With `history`, the conversation so far is sent and this turn (the
    message and the reply) appended to it, as a stateless API client keeps its own conversation: so direct requests
    are as large as the gateway's, and "added" latency is the gateway's work, not the upstream reading more."""
    timing = Timing(sent=time.perf_counter())
    # Text blocks, as the gateway sends every message: a plain string is a third shorter on the wire, and the upstream
    # would then read less JSON on the direct side than through the gateway.
    messages: list[Any] = [*(history or []), {"role": "user", "content": [{"type": "text", "text": content}]}]
    stream: Any = await client.messages.create(model=MODEL, max_tokens=8192, messages=messages, stream=True)
    finished = False
    parts: list[str] = []
    async for event in stream:
        if event.type == "content_block_delta" and event.delta.type in ("text_delta", "thinking_delta"):
            now = time.perf_counter()
            timing.delta(now)
            if rec is not None:
                rec.delta(now)
            if event.delta.type == "text_delta":
                parts.append(event.delta.text)
        elif event.type == "message_stop":
            finished = True
    now = time.perf_counter()
    if not finished:
        raise TurnFailed("TRUNCATED")
    timing.end(now)
    if rec is not None:
        rec.turn_done(timing.sent, timing.first, now, timing.max_gap, timing.last if timing.first is not None else None)
    if history is not None:
        history += [messages[-1], {"role": "assistant", "content": [{"type": "text", "text": "".join(parts)}]}]
