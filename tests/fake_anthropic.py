"""A fake Anthropic Messages API server speaking the real wire format.

Tests run the real `anthropic` SDK against it, so anything the SDK would reject here the real API would too. Every
request also passes the checks the real API makes before any model work (tests/api_rules.py: thinking signatures,
role order, tool_use/tool_result pairing, required and unknown fields), answered with the API's own 400.
Run standalone for benchmarks: `python -m tests.fake_anthropic --port 4010 --words 20 --delay-ms 5`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.api_rules import check_request, sign_thinking
from tests.fake_cache import PromptCache

_SEP = (",", ":")
_WORD = re.compile(r"\s*\S+\s*")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
# Templates rather than json.dumps of whole dicts: deltas dominate the event count at 200 concurrent streams.
_DELTA = 'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"%s","%s":%s}}\n\n'
_STOP = 'event: content_block_stop\ndata: {"type":"content_block_stop","index":%d}\n\n'
_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
_MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'


@dataclass
class Reply:
    text: str | None = None
    thinking: str | None = "Thinking it over."
    chunk_words: int = 1
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_5m: int = 0
    cache_creation_1h: int = 0
    cache_read: int = 0
    stop_reason: str = "end_turn"
    delay_s: float = 0.0
    status: int = 200
    error_type: str | None = None
    retry_after: str | None = None
    error_after_deltas: int | None = None
    truncate_after_deltas: int | None = None
    hold_after_deltas: int | None = None
    output_tokens_before_error: int | None = None
    # An overloaded error after this many of the block events (each block's start, input pieces, stop), none of which
    # a client sees unless it streams tool input: the attempt is retried, its tool input generated and unreported.
    error_after_block_events: int | None = None
    # Content blocks streamed after the text (tool_use, server_tool_use and its result, ...), as the API returns
    # them; a tool_use's `input` is streamed as input_json_delta pieces. With blocks and no `text`, no text block.
    blocks: list[dict[str, Any]] | None = None
    server_tool_use: dict[str, int] | None = None  # usage.server_tool_use, e.g. {"web_search_requests": 1}


def tool_use(name: str, input: dict[str, Any] | None = None, *, id: str | None = None) -> dict[str, Any]:
    """A tool_use block for `Reply.blocks`."""
    return {"type": "tool_use", "id": id or f"toolu_{uuid.uuid4().hex[:24]}", "name": name, "input": input or {}}


def tool_reply(*calls: dict[str, Any], text: str | None = None, **fields: Any) -> Reply:
    """A reply that stops to call tools: optional text first, then the tool_use blocks."""
    return Reply(text=text, blocks=list(calls), stop_reason="tool_use", **fields)


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]  # keys lower-cased
    body: dict[str, Any]
    raw: bytes = b""  # the body's bytes as they arrived
    query: str = ""


@dataclass
class _Stream:
    ended: bool = False
    cancelled: bool = False


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=_SEP)}\n\n".encode()


def _chunks(text: str, words: int) -> list[str]:
    # Whitespace stays attached to its word so the deltas join back to exactly `text`.
    pieces = _WORD.findall(text) or ([text] if text else [])
    step = max(1, words)
    return ["".join(pieces[i : i + step]) for i in range(0, len(pieces), step)]


def _delta(index: int, kind: str, key: str, value: str) -> bytes:
    return (_DELTA % (index, kind, key, json.dumps(value))).encode()


def _error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def _last_user_text(body: dict[str, Any]) -> str:
    for msg in reversed(body.get("messages") or []):
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            return content
        return "".join(b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text")
    return ""


# The gateway's summarisation requests (gateway/context/compaction.py) end with a user turn starting so.
COMPACTION_REQUEST = "Compaction request:"
SUMMARY_SNIPPET_CHARS = 40


def summary_of(body: dict[str, Any]) -> str | None:
    """A recognisable answer to a summarisation request, else None: `Summary of N messages: ` and the start of each
    earlier user text, in order ("first question | second question | ..."). A summary in the request (a compaction
    before) is kept in it as `[...]`."""
    messages = body.get("messages") or []
    last = messages[-1] if messages else {}
    blocks = last.get("content") if isinstance(last.get("content"), list) else []
    if not any(b.get("type") == "text" and str(b.get("text", "")).startswith(COMPACTION_REQUEST) for b in blocks):
        return None
    snippets: list[str] = []
    for message in messages:
        content = message.get("content")
        for block in [{"type": "text", "text": content}] if isinstance(content, str) else content or []:
            text = str(block.get("text", "")) if block.get("type") == "text" else ""
            if message.get("role") == "assistant" and text.startswith("Summary of "):
                snippets.append(f"[{text[:SUMMARY_SNIPPET_CHARS]}]")
            elif message.get("role") == "user" and text and not text.startswith(("[", COMPACTION_REQUEST)):
                snippets.append(text[:SUMMARY_SNIPPET_CHARS])
    return f"Summary of {len(messages)} messages: " + " | ".join(snippets)


def estimate_tokens(body: dict[str, Any]) -> int:
    return max(1, len(json.dumps([body.get("system"), body.get("messages"), body.get("tools")])) // 4)


def create_app(fake: FakeAnthropic) -> web.Application:
    # The real Messages API takes request bodies up to 32 MB (aiohttp would stop at 1 MB).
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_post("/v1/messages", fake._handle_messages)
    app.router.add_post("/v1/messages/count_tokens", fake._handle_count_tokens)
    app.router.add_get("/v1/models", fake._handle_models)
    app.router.add_get("/v1/models/{model_id}", fake._handle_models)
    return app


# What GET /v1/models lists, newest first, as the API shapes each entry.
MODELS = (
    ("claude-sonnet-5-5", "Claude Sonnet 5.5", "2026-09-30T00:00:00Z"),
    ("claude-opus-5-5", "Claude Opus 5.5", "2026-09-30T00:00:00Z"),
    ("claude-haiku-5-5", "Claude Haiku 5.5", "2026-08-12T00:00:00Z"),
)


class FakeAnthropic:
    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.app = create_app(self)
        self.requests: list[RecordedRequest] = []
        self.default = Reply()
        self.count_tokens_value: int | None = None
        self.unknown_models: set[str] = {"claude-sonnet-4", "claude-3-5-haiku-20241022"}
        self.streams_cancelled = 0
        self.streams_completed = 0
        self.refusals: list[str] = []  # every 400 the API's own checks gave (tests/api_rules.py), in order
        # Set to a PromptCache to have usage report cache reads and writes from the requests' breakpoints (replies
        # that set their own token counts keep them).
        self.prompt_cache: PromptCache | None = None
        self._queue: list[Reply] = []
        self._message_requests: list[RecordedRequest] = []
        self._streams: list[_Stream] = []
        self._holds_reached = 0
        self._holding = 0
        self._release_pending = False
        self._closed = False
        self._release_event = asyncio.Event()
        self._tick = asyncio.Event()  # replaced on every state change; waiters re-check their predicate
        self._runner: web.AppRunner | None = None
        self.base_url: str | None = None  # set by start()
        # A wait_* that can never succeed should fail the test with TimeoutError, not hang the suite.
        self.wait_timeout: float | None = 5.0

    def queue(self, *replies: Reply) -> None:
        self._queue.extend(replies)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        # handler_cancellation makes aiohttp cancel a handler when its client disconnects: that is how a held stream
        # learns the gateway gave up. A short shutdown_timeout keeps close() fast when streams are still open.
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.base_url = f"http://{host}:{self._runner.addresses[0][1]}"
        return self.base_url

    async def close(self) -> None:
        self._closed = True
        self._release_event.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def release(self) -> None:
        """Let every held stream continue; if none is holding yet, the next one to reach its hold passes through."""
        if self._holding:
            self._release_event.set()
            self._release_event = asyncio.Event()
        else:
            self._release_pending = True

    async def wait_for_request(self, n: int = 1) -> RecordedRequest:
        """Wait until at least n /v1/messages requests arrived; return the n-th (1-based)."""
        await self._wait_until(lambda: len(self._message_requests) >= n)
        return self._message_requests[n - 1]

    async def wait_held(self, n: int = 1) -> None:
        """Wait until streams have reached their hold point n times in total (counts past holds too, so no races)."""
        await self._wait_until(lambda: self._holds_reached >= n)

    async def wait_stream_closed(self, n: int | None = None) -> bool:
        """Wait until a stream ended; True if its client went away first.

        Default: the most recently started stream (waiting for one to start if none has). `n` picks the n-th stream
        in start order instead.
        """
        count = n or 1
        await self._wait_until(lambda: len(self._streams) >= count)
        stream = self._streams[count - 1] if n else self._streams[-1]
        await self._wait_until(lambda: stream.ended)
        return stream.cancelled

    def _notify(self) -> None:
        self._tick.set()
        self._tick = asyncio.Event()

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(self.wait_timeout):
            while not predicate():
                await self._tick.wait()

    async def _hold(self) -> None:
        self._holds_reached += 1
        self._notify()
        if self._closed or self._release_pending:
            self._release_pending = False
            return
        event = self._release_event
        self._holding += 1
        try:
            await event.wait()
        finally:
            self._holding -= 1

    def _error(self, status: int, error_type: str | None, message: str, retry_after: str | None = None) -> web.Response:
        kind = error_type or _ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
        headers = {"retry-after": retry_after} if retry_after is not None else None
        return web.json_response(_error_body(kind, message), status=status, headers=headers)

    async def _admit(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        """Record the request, then apply the checks the real API makes before any model work."""
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        recorded = RecordedRequest(
            request.path, headers, body if isinstance(body, dict) else {}, raw, request.query_string
        )
        self.requests.append(recorded)
        if request.path == "/v1/messages":
            self._message_requests.append(self.requests[-1])
            self._notify()
        if not isinstance(body, dict):
            return {}, self._error(400, None, "request body must be a JSON object")
        auth = headers.get("authorization", "")
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else headers.get("x-api-key")
        if self.api_key is not None and key != self.api_key:
            return body, self._error(401, None, "invalid x-api-key")
        refusal = check_request(body, count_tokens=request.path.endswith("/count_tokens"))
        if refusal is not None:
            self.refusals.append(refusal)
            return body, self._error(400, None, refusal)
        if body.get("model") in self.unknown_models:
            return body, self._error(404, None, f"model: {body.get('model')}")
        return body, None

    async def _handle_models(self, request: web.Request) -> web.Response:
        """GET /v1/models (paged with limit / after_id / before_id) and GET /v1/models/{id}."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(RecordedRequest(request.path, headers, {}))
        auth = headers.get("authorization", "")
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else headers.get("x-api-key")
        if self.api_key is not None and key != self.api_key:
            return self._error(401, None, "invalid x-api-key")
        entries = [{"type": "model", "id": i, "display_name": n, "created_at": c} for i, n, c in MODELS]
        wanted = request.match_info.get("model_id")
        if wanted is not None:
            found = [e for e in entries if e["id"] == wanted]
            return web.json_response(found[0]) if found else self._error(404, None, f"model: {wanted}")
        ids = [e["id"] for e in entries]
        start = ids.index(request.query["after_id"]) + 1 if request.query.get("after_id") in ids else 0
        page = entries[start : start + int(request.query.get("limit", "20"))]
        return web.json_response(
            {
                "data": page,
                "has_more": start + len(page) < len(entries),
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
            }
        )

    async def _handle_count_tokens(self, request: web.Request) -> web.Response:
        body, failure = await self._admit(request)
        if failure is not None:
            return failure
        value = self.count_tokens_value if self.count_tokens_value is not None else estimate_tokens(body)
        return web.json_response({"input_tokens": value})

    async def _handle_messages(self, request: web.Request) -> web.StreamResponse:
        body, failure = await self._admit(request)
        if failure is not None:
            return failure  # rejected requests leave the queue alone so the queued reply reaches the next valid one
        reply = self._queue.pop(0) if self._queue else self.default
        if reply.status != 200:
            return self._error(reply.status, reply.error_type, f"fake error {reply.status}", reply.retry_after)
        plan = _Plan(reply, body, self.prompt_cache)
        if body.get("stream"):
            return await self._stream(request, reply, plan)
        return web.json_response(plan.message(final=True), headers={"request-id": f"req_{uuid.uuid4().hex[:24]}"})

    async def _stream(self, request: web.Request, reply: Reply, plan: _Plan) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "content-type": "text/event-stream; charset=utf-8",
                "cache-control": "no-cache",
                "request-id": f"req_{uuid.uuid4().hex[:24]}",
            },
        )
        await resp.prepare(request)
        state = _Stream()
        self._streams.append(state)
        self._notify()
        finished = False  # past the last event: a disconnect from here on is the client's normal close, not a cancel
        try:
            await resp.write(_sse("message_start", {"type": "message_start", "message": plan.message(final=False)}))
            await resp.write(_PING)
            if plan.thinking_events:
                await resp.write(
                    _sse(
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": 0,
                            "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                        },
                    )
                )
                for event in plan.thinking_events:
                    if reply.delay_s:
                        await asyncio.sleep(reply.delay_s)
                    await resp.write(event)
                await resp.write(_delta(0, "signature_delta", "signature", plan.signature))
                await resp.write((_STOP % 0).encode())
            if plan.has_text:
                await resp.write(
                    _sse(
                        "content_block_start",
                        {
                            "type": "content_block_start",
                            "index": plan.text_index,
                            "content_block": {"type": "text", "text": ""},
                        },
                    )
                )
            for i in range(len(plan.text_events) + 1):
                if i == reply.hold_after_deltas:
                    await self._hold()
                if i == reply.error_after_deltas:
                    finished = True
                    await resp.write(_sse("error", _error_body(reply.error_type or "overloaded_error", "Overloaded")))
                    break
                if i == reply.truncate_after_deltas:
                    finished = True
                    break
                if i < len(plan.text_events):
                    if reply.delay_s:
                        await asyncio.sleep(reply.delay_s)
                    await resp.write(plan.text_events[i])
            else:
                if plan.has_text:
                    await resp.write((_STOP % plan.text_index).encode())
                for n, event in enumerate(plan.block_events):
                    if n == reply.error_after_block_events:
                        await resp.write(_sse("error", _error_body("overloaded_error", "Overloaded")))
                        break
                    await resp.write(event)
                else:
                    await resp.write(_sse("message_delta", plan.message_delta()))
                    await resp.write(_MESSAGE_STOP)
                finished = True
            with contextlib.suppress(ConnectionResetError):
                await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError) as exc:
            state.cancelled = not finished
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            state.ended = True
            if state.cancelled:
                self.streams_cancelled += 1
            else:
                self.streams_completed += 1
            self._notify()
        return resp


def _block_events(blocks: list[dict[str, Any]], first_index: int) -> list[bytes]:
    """Each block as the API streams it: a tool call starts with empty input, which follows in JSON pieces."""
    events: list[bytes] = []
    for index, block in enumerate(blocks, start=first_index):
        streamed_input = block.get("type") in ("tool_use", "server_tool_use")
        start = {**block, "input": {}} if streamed_input else block
        events.append(
            _sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": start})
        )
        if streamed_input:
            raw = json.dumps(block.get("input") or {}, separators=_SEP)
            for piece in (raw[i : i + 8] for i in range(0, len(raw), 8)):
                events.append(_delta(index, "input_json_delta", "partial_json", piece))
        events.append((_STOP % index).encode())
    return events


class _Plan:
    """Everything a reply will send, computed before the first byte so the streaming loop only writes."""

    def __init__(self, reply: Reply, body: dict[str, Any], cache: PromptCache | None = None) -> None:
        self.reply = reply
        self.model = str(body.get("model", ""))
        self.text = reply.text if reply.text is not None else summary_of(body) or f"You said: {_last_user_text(body)}"
        if reply.blocks is not None and reply.text is None:
            self.text = ""
        self.has_text = bool(self.text) or reply.blocks is None
        self.block_events = _block_events(reply.blocks or [], (1 if reply.thinking is not None else 0) + self.has_text)
        text_chunks = _chunks(self.text, reply.chunk_words)
        thinking_chunks = _chunks(reply.thinking, reply.chunk_words) if reply.thinking is not None else []
        self.text_index = 1 if reply.thinking is not None else 0
        self.text_events = [_delta(self.text_index, "text_delta", "text", c) for c in text_chunks]
        # An empty thinking string still gets one delta so the block looks like a real (if terse) one.
        self.thinking_events = [_delta(0, "thinking_delta", "thinking", c) for c in thinking_chunks or [""]]
        if reply.thinking is None:
            self.thinking_events = []
        self.signature = sign_thinking(reply.thinking or "")
        self.input_tokens = reply.input_tokens if reply.input_tokens is not None else estimate_tokens(body)
        self.cache_write_5m, self.cache_read = reply.cache_creation_5m, reply.cache_read
        if cache is not None and reply.input_tokens is None and not (reply.cache_creation_5m or reply.cache_read):
            used = cache.use(body)
            self.input_tokens, self.cache_write_5m, self.cache_read = (
                used.input_tokens,
                used.cache_write,
                used.cache_read,
            )
        self.output_tokens = (
            reply.output_tokens
            if reply.output_tokens is not None
            else len(text_chunks) + len(thinking_chunks) + len(reply.blocks or [])
        )
        self.id = f"msg_{uuid.uuid4().hex[:24]}"

    def usage(self, output_tokens: int) -> dict[str, Any]:
        r = self.reply
        extra = {"server_tool_use": dict(r.server_tool_use)} if r.server_tool_use else {}
        return {
            **extra,
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_write_5m + r.cache_creation_1h,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_write_5m,
                "ephemeral_1h_input_tokens": r.cache_creation_1h,
            },
            "output_tokens": output_tokens,
        }

    def message(self, *, final: bool) -> dict[str, Any]:
        content: list[dict[str, Any]] = [{"type": "text", "text": self.text}] if final and self.has_text else []
        if final:
            content.extend(self.reply.blocks or [])
        if final and self.reply.thinking is not None:
            content.insert(0, {"type": "thinking", "thinking": self.reply.thinking, "signature": self.signature})
        # Like the real API, message_start reports a token or so of output before any content exists.
        early = self.reply.output_tokens_before_error if self.reply.output_tokens_before_error is not None else 1
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.reply.stop_reason if final else None,
            "stop_sequence": None,
            "usage": self.usage(self.output_tokens if final else early),
        }

    def message_delta(self) -> dict[str, Any]:
        # The current API repeats the (cumulative) input counts here; a consumer must not add them twice.
        usage = self.usage(self.output_tokens)
        del usage["cache_creation"]
        return {
            "type": "message_delta",
            "delta": {"stop_reason": self.reply.stop_reason, "stop_sequence": None},
            "usage": usage,
        }


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeAnthropic(api_key=args.api_key)
    words = " ".join(f"word{i}" for i in range(args.words)) if args.words else None
    fake.default = Reply(
        text=words, thinking="Thinking it over." if args.thinking else None, delay_s=args.delay_ms / 1000
    )
    if args.script:
        # A JSON list of replies (Reply's fields), answered in order before the default one: e.g. a tool loop,
        # [{"blocks": [{"type": "tool_use", "id": "toolu_1", "name": "read_skill", "input": {"name": "pdf"}}],
        #   "stop_reason": "tool_use"}, {"text": "done"}].
        script = json.loads(Path(args.script).read_text(encoding="utf-8"))  # noqa: ASYNC240 - once, at start-up
        fake.queue(*(Reply(**reply) for reply in script))
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    # Print only once signals are handled, so a runner that kills us as soon as it sees the URL gets a clean exit.
    print(await fake.start(args.host, args.port), flush=True)
    await stop.wait()
    await fake.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Fake Anthropic Messages API for benchmarks and manual tests")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4010)
    parser.add_argument("--words", type=int, default=0, help="reply with N words instead of echoing the prompt")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="pause between deltas")
    parser.add_argument("--thinking", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--api-key", default=None, help="reject requests carrying another key")
    parser.add_argument("--script", default=None, help="a JSON file: a list of replies to answer with, in order")
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
