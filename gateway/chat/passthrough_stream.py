"""The upstream's answer to one HTTP API request, relayed byte for byte while it is read for the accounting: the SSE
events fold into a `Reply` (content blocks, usage, stop reason) exactly as a chat.send's do, and a non-streamed body
is read the same way."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import anthropic
import httpx2
import orjson

from gateway import errors
from gateway.store.db import json_loads

from .metrics import TurnObserver
from .reply import Reply
from .upstream import _TYPE_ERRORS, Upstream, map_error

# Upstream response headers that describe the hop, not the answer: aiohttp writes its own.
HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "date", "server",
     "set-cookie", "proxy-connection", "upgrade", "trailer", "te"}
)  # fmt: skip


def relayed_headers(headers: httpx2.Headers) -> list[tuple[str, str]]:
    """The headers a client gets back: the upstream's own (request-id, anthropic-ratelimit-*, retry-after, ...)."""
    return [(name, value) for name, value in headers.multi_items() if name.lower() not in HOP_HEADERS]


def error_event(kind: str, message: str) -> bytes:
    """An `error` event, as the API sends one mid-stream (the SDK raises it as an APIStatusError)."""
    data = anthropic_error(kind, message)
    return b"event: error\ndata: " + data + b"\n\n"


def anthropic_error(kind: str, message: str, request_id: str | None = None) -> bytes:
    """The API's error body: `{"type": "error", "error": {"type": ..., "message": ...}}`."""
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return orjson.dumps(body)


class SseEvents:
    """Server-sent events out of a byte stream, whatever the chunk boundaries: (event name, data) per event."""

    def __init__(self) -> None:
        self._partial = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        out: list[tuple[str | None, str]] = []
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if self._data:
                    out.append((self._event, "\n".join(self._data)))
                self._event, self._data = None, []
            elif not line.startswith(b":"):
                name, _, value = line.partition(b":")
                text = value[1:] if value.startswith(b" ") else value
                if name == b"event":
                    self._event = text.decode()
                elif name == b"data":
                    self._data.append(text.decode())
        return out


class Exchange:
    """One upstream answer: its status and headers to relay, and its body to relay while `reply` learns it."""

    def __init__(self, status: int, headers: list[tuple[str, str]], obs: TurnObserver, started: float) -> None:
        self.status = status
        self.headers = headers
        self.reply = Reply()
        self.failure: errors.GatewayError | None = None
        self.first_token_ms: int | None = None
        self.error_body: bytes | None = None  # an error status's body, relayed as it came
        self.stopped = False  # the gateway is shutting down: whatever happens to the read now is not the upstream's
        self._obs = obs
        self._started = started
        self._response: httpx2.Response | None = None
        # Called once, at the first event that names the upstream message (its usage row begins), and after each
        # chunk relayed (the checkpoint clock): chat/spend.py.
        self.on_start: Callable[[], None] | None = None
        self.touch: Callable[[], None] = _nothing

    @classmethod
    def of_error(cls, exc: anthropic.APIStatusError, obs: TurnObserver, started: float) -> Exchange:
        """The upstream refused (400, 401, 429, 529, ...): relayed as is; nothing was generated, nothing billed."""
        exchange = cls(exc.status_code, relayed_headers(exc.response.headers), obs, started)
        exchange.failure = map_error(exc)
        exchange.error_body = exc.response.content
        return exchange

    @classmethod
    def of_response(cls, response: httpx2.Response, obs: TurnObserver, started: float) -> Exchange:
        exchange = cls(response.status_code, relayed_headers(response.headers), obs, started)
        exchange._response = response
        return exchange

    @property
    def streaming(self) -> bool:
        return self._response is not None and "text/event-stream" in self._response.headers.get("content-type", "")

    async def read(self) -> bytes:
        """A whole (non-streamed) answer, its message folded into `reply`."""
        if self._response is None:
            return self.error_body or b""
        try:
            body = await self._response.aread()
        except Exception as exc:
            self.failure = map_error(exc)
            raise self.failure from exc
        finally:
            await self._response.aclose()
        self._learn_message(body)
        return body

    async def chunks(self) -> AsyncGenerator[bytes]:
        """The answer's bytes as they arrive. A transport failure after the headers ends the stream with an `error`
        event (the status is sent already), and the failure is kept for the accounting."""
        assert self._response is not None
        events = SseEvents()
        try:
            async for chunk in self._response.aiter_bytes():
                received = time.perf_counter()
                for name, data in events.feed(chunk):
                    self._learn_event(name, data)
                yield chunk
                self._obs.relayed(received)
                self.touch()
            if self.failure is None and not self.reply.finished:
                self.failure = errors.UpstreamError("the upstream stream ended before message_stop")
        except (httpx2.HTTPError, anthropic.APIError, OSError, TimeoutError) as exc:
            if self.stopped:
                return  # the shutdown cut the read (a cancelled read can surface as a timeout)
            self.failure = map_error(exc)
            yield error_event(_API_TYPE.get(self.failure.code, "api_error"), self.failure.message)
        finally:
            await self._response.aclose()

    def _learn_event(self, name: str | None, data: str) -> None:
        if name == "error":
            try:
                kind = json_loads(data)["error"]["type"]
            except (ValueError, KeyError, TypeError):
                kind = "api_error"
            self.failure = _TYPE_ERRORS.get(kind, errors.UpstreamError)(f"upstream error event: {kind}")
            return
        if name is None or name == "ping" or not data:
            return
        try:
            event = json_loads(data)
        except ValueError:
            return  # not ours to judge: relayed as it came
        if self.reply.feed(event) is not None:
            if self.first_token_ms is None:
                self.first_token_ms = int((time.monotonic() - self._started) * 1000)
        elif self.on_start is not None and self.reply.message_id is not None:
            start, self.on_start = self.on_start, None
            start()

    def _learn_message(self, body: bytes) -> None:
        try:
            message = json_loads(body)
        except ValueError:
            self.failure = errors.UpstreamError("the upstream answered with a body that is not JSON")
            return
        if not isinstance(message, dict) or not isinstance(message.get("id"), str):
            self.failure = errors.UpstreamError("the upstream answered with a body that is not a message")
            return
        reply = self.reply
        reply.feed({"type": "message_start", "message": message})  # its id, usage and server tool counts
        reply.blocks = [b for b in message.get("content") or [] if isinstance(b, dict)]
        reply.text_parts = [str(b.get("text", "")) for b in reply.blocks if b.get("type") == "text"]
        reply.stop_reason = message.get("stop_reason")
        reply.finished = True


def _nothing() -> None:
    return None


# Our error codes as the API's error types, for an error event the gateway writes itself.
_API_TYPE = {
    "UPSTREAM_TIMEOUT": "timeout_error",
    "OVERLOADED": "overloaded_error",
    "RATE_LIMITED": "rate_limit_error",
}


async def relay_once(
    upstream: Upstream, method: str, path: str, content: bytes | None, headers: dict[str, str], params: dict[str, str]
) -> tuple[int, list[tuple[str, str]], bytes]:
    """A request with nothing to account for (count_tokens, models): its answer, error statuses included, as the
    upstream gave it. A failure to reach the upstream raises the mapped GatewayError."""
    try:
        response = await upstream.forward(method, path, content=content, headers=headers, params=params)
    except anthropic.APIStatusError as exc:
        return exc.status_code, relayed_headers(exc.response.headers), exc.response.content
    except errors.GatewayError:
        raise
    except Exception as exc:
        raise map_error(exc) from exc
    try:
        body = await response.aread()
    except Exception as exc:
        raise map_error(exc) from exc
    finally:
        await response.aclose()
    return response.status_code, relayed_headers(response.headers), body
