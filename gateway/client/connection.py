"""An async Python client for the gateway's WebSocket protocol (docs/PROTOCOL.md), over aiohttp.

    async with GatewayClient.connect("ws://127.0.0.1:3271/gateway", token=None) as gw:
        reply = gw.chat("What is WAL mode?")
        async for delta in reply:
            if not delta.is_thinking:
                print(delta.text, end="", flush=True)
        print(reply.end.usage.output_tokens, reply.end.cost.total)
        await gw.history(reply.session_id)

One background task reads every frame and hands it to whoever waits for its `id`, so a `cancel()` (or any query) can
be sent and answered while a reply streams. Errors arrive as typed exceptions (gateway.client.errors) carrying `code`.
This module talks only the protocol: it imports nothing of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence

import aiohttp

from .errors import (
    AuthError,
    ConflictError,
    ConnectionClosedError,
    GatewayClientError,
    error_from_frame,
)
from .queries import Queries, _fields
from .stream import ChatStream
from .tool_desk import ToolDesk
from .tool_types import ApprovalHandler, ClientTool, ToolHandler
from .types import TERMINAL, Frame, normalize_url

log = logging.getLogger(__name__)

DEFAULT_URL = "ws://127.0.0.1:3271/gateway"
_POLICY_VIOLATION = 1008


class GatewayClient(Queries):
    """A connection to the gateway. Use `GatewayClient.connect(...)` as an async context manager."""

    def __init__(self, http: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, request_timeout: float):
        self._http = http
        self._ws = ws
        self.request_timeout = request_timeout
        self._ids = itertools.count(1)
        self._prefix = secrets.token_hex(4)
        self._waiting: dict[str, asyncio.Future[Frame] | ChatStream] = {}
        self._write_lock = asyncio.Lock()
        self._closed: GatewayClientError | None = None
        self.active: ChatStream | None = None  # the reply streaming now, if any
        self._grants: set[tuple[str, str]] = set()  # (session, tool) this client allowed for the session
        self._reader = asyncio.create_task(self._read(), name="gateway-client-reader")

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        request_timeout: float = 60.0,
        connect_timeout: float = 10.0,
    ) -> AsyncIterator[GatewayClient]:
        """Open the WebSocket (the token goes as an `Authorization: Bearer` header) and close it on exit."""
        client = await cls.open(url, token, request_timeout=request_timeout, connect_timeout=connect_timeout)
        try:
            yield client
        finally:
            await client.close()

    @classmethod
    async def open(
        cls,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        request_timeout: float = 60.0,
        connect_timeout: float = 10.0,
    ) -> GatewayClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=connect_timeout))
        try:
            ws = await http.ws_connect(normalize_url(url), headers=headers, max_msg_size=0, autoping=True)
        except aiohttp.WSServerHandshakeError as exc:
            await http.close()
            if exc.status in (401, 403):
                raise AuthError(
                    f"the gateway refused the connection ({exc.status} {exc.message})", code="UNAUTHORIZED"
                ) from exc
            raise ConnectionClosedError(
                f"WebSocket upgrade failed: {exc.status} {exc.message}", code="CONNECTION_FAILED"
            ) from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            await http.close()
            raise ConnectionClosedError(
                f"cannot reach the gateway at {url}: {exc or type(exc).__name__}", code="CONNECTION_FAILED"
            ) from exc
        return cls(http, ws, request_timeout)

    async def close(self) -> None:
        if not self._ws.closed:
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self._http.close()

    @property
    def closed(self) -> bool:
        return self._closed is not None

    def _next_id(self) -> str:
        # Unique beyond this connection: a connection that answers an approval for a turn whose client left takes
        # that turn over and receives its frames under the original chat.send's id, which must not be one of ours.
        return f"py-{self._prefix}-{next(self._ids)}"

    async def _write(self, frame: Frame) -> None:
        if self._closed is not None:
            raise self._closed
        try:
            async with self._write_lock:
                await self._ws.send_str(json.dumps(frame, ensure_ascii=False))
        except (ConnectionError, RuntimeError) as exc:
            raise ConnectionClosedError(f"the connection is closed: {exc}") from exc

    async def _read(self) -> None:
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    log.warning("gateway sent a frame that is not JSON")
                    continue
                self._dispatch(frame)
        finally:
            code = self._ws.close_code
            if code == _POLICY_VIOLATION:
                reason: GatewayClientError = AuthError(
                    "the gateway closed the connection: authentication required (pass token=...)", code="UNAUTHORIZED"
                )
            else:
                reason = ConnectionClosedError(f"the gateway closed the connection (code {code})")
            self._closed = reason
            for waiter in self._waiting.values():
                if isinstance(waiter, ChatStream):
                    waiter._feed(reason)
                elif not waiter.done():
                    waiter.set_exception(reason)
            self._waiting.clear()

    def _dispatch(self, frame: Frame) -> None:
        rid = frame.get("id")
        waiter = self._waiting.get(rid) if isinstance(rid, str) else None
        if waiter is None or not isinstance(rid, str):
            log.debug("frame nobody waits for: %s %s", frame.get("type"), frame.get("code", ""))
            return
        terminal = frame.get("type") in TERMINAL
        if isinstance(waiter, ChatStream):
            waiter._feed(frame)
            if terminal:
                del self._waiting[rid]
                if self.active is waiter:
                    self.active = None
        else:
            del self._waiting[rid]
            if not waiter.done():
                waiter.set_result(frame)

    async def _send_stream(self, stream: ChatStream) -> None:
        self._waiting[stream.request_id] = stream
        self.active = stream
        try:
            await self._write(stream._frame)
        except GatewayClientError as exc:
            self._waiting.pop(stream.request_id, None)
            stream._feed(exc)

    async def request(self, frame: Frame, wait_s: float | None = None) -> Frame:
        """Send any frame and wait for the one answer with its `id` (at most `wait_s`, default `request_timeout`
        seconds); an `error` answer is raised."""
        rid = self._next_id()
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = future
        try:
            await self._write({**frame, "id": rid})
            async with asyncio.timeout(wait_s or self.request_timeout):
                answer = await future
        except TimeoutError:
            raise ConnectionClosedError(f"no answer to {frame.get('type')} in time", code="TIMEOUT") from None
        finally:
            self._waiting.pop(rid, None)
        if answer.get("type") == "error":
            raise error_from_frame(answer)
        return answer

    def chat(
        self,
        content: str,
        session_id: str | None = None,
        agent_id: str | None = None,
        model: str | None = None,
        max_tokens: int | None = None,
        idempotency_key: str | None = None,
        *,
        tools: Sequence[ClientTool] = (),
        tool_handlers: Mapping[str, ToolHandler] | None = None,
        on_approval: ApprovalHandler | None = None,
        stream_tool_input: bool = False,
    ) -> ChatStream:
        """Send a message; iterate the answer. `tools` are run by this client (sent as the chat.send's `tools`),
        `tool_handlers` run the agent's own client-run tools (its tools.json) by name, and `on_approval` answers
        each approval request (return a decision, or None to answer later with `ChatStream.approve`)."""
        handlers = {**(tool_handlers or {}), **{tool.name: tool.handler for tool in tools}}
        frame = _fields(
            type="chat.send",
            id=self._next_id(),
            content=content,
            sessionId=session_id,
            agentId=agent_id,
            model=model,
            maxTokens=max_tokens,
            idempotencyKey=idempotency_key,
            tools=[tool.definition for tool in tools] or None,
            streamToolInput=stream_tool_input or None,
        )
        return ChatStream(self, frame, ToolDesk(self, handlers, on_approval, self._grants))

    async def cancel(self, session_id: str | None = None, send_id: str | None = None) -> Frame:
        """Stop the reply streaming in `session_id` (default: this client's running reply)."""
        if session_id is None:
            active = self.active
            if active is None or active.session_id is None:
                raise ConflictError("nothing is streaming on this connection", code="NOTHING_TO_CANCEL")
            session_id, send_id = active.session_id, send_id or active.request_id
        return await self.request(_fields(type="chat.cancel", sessionId=session_id, sendId=send_id))
