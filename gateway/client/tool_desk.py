"""The tool side of one reply: approvals answered through the caller's handler, and the calls this client runs
itself (client tools) run through theirs, each answered with `chat.tool.result`.

A client call runs only when the gateway will use its result: at once when its policy is `allow`, and when it is `ask`
once the call is approved. Approved by this client, the desk knows; a call whose tool the user allowed for the whole
session earlier (perhaps from another client) gets no approval request at all, so for a call with policy `ask` the
desk reads the call's state from `session.history` (its row is saved before the call is announced) instead of
guessing from frames that may never come.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Mapping
from typing import Any, Protocol

from .errors import ConflictError, ConnectionClosedError, GatewayClientError, InvalidRequestError, NotFoundError
from .tool_types import (
    ALLOWED,
    ApprovalHandler,
    ApprovalRequest,
    Decision,
    ToolCall,
    ToolError,
    ToolHandler,
    ToolResult,
    result_content,
)
from .types import Frame

log = logging.getLogger(__name__)


class Requester(Protocol):
    """What the desk needs of the client: one request answered (an error answer raised)."""

    async def request(self, frame: Frame) -> Frame: ...


class ToolDesk:
    def __init__(
        self,
        client: Requester,
        handlers: Mapping[str, ToolHandler],
        on_approval: ApprovalHandler | None,
        grants: set[tuple[str, str]],
    ) -> None:
        self._client = client
        self._handlers = dict(handlers)
        self._on_approval = on_approval
        # (session, tool) pairs this client allowed for the session: their later calls come without an approval.
        self._grants = grants
        self._gates: dict[str, asyncio.Future[bool]] = {}  # a client call waiting on its approval: go or not
        self._asking: dict[str, asyncio.Task[None]] = {}  # approval handlers still deciding, by call
        self._tasks: set[asyncio.Task[None]] = set()
        self._names: dict[str, str] = {}  # call id -> tool name, for allow_session
        self._closed = False

    def on_event(self, event: object) -> None:
        """Called by the reader in frame order, before the caller sees the event."""
        if self._closed:
            return
        if isinstance(event, ToolCall):
            self._names[event.tool_use_id] = event.name
            if event.executor == "client" and event.policy != "deny":
                gate: asyncio.Future[bool] | None = None
                if event.policy == "ask":
                    gate = self._gates[event.tool_use_id] = asyncio.get_running_loop().create_future()
                self._spawn(self._client_call(event, gate))
        elif isinstance(event, ApprovalRequest) and self._on_approval is not None:
            self._asking[event.tool_use_id] = self._spawn(self._answer(event))
        elif isinstance(event, ToolResult):
            self._open(event.tool_use_id, False)
            # Decided elsewhere, expired or cancelled: a prompt still open for it has nothing left to decide.
            asking = self._asking.pop(event.tool_use_id, None)
            if asking is not None and asking is not asyncio.current_task():
                asking.cancel()

    def close(self) -> None:
        """The reply is over: stop every handler still running."""
        self._closed = True
        for tool_use_id in list(self._gates):
            self._open(tool_use_id, False)
        for task in self._tasks:
            task.cancel()

    async def approve(self, tool_use_id: str, decision: Decision, session_id: str | None = None) -> Frame:
        frame: Frame = {"type": "chat.tool.approve", "toolUseId": tool_use_id, "decision": decision}
        if session_id is not None:
            frame["sessionId"] = session_id
        try:
            answer = await self._client.request(frame)
        except ConflictError as exc:
            # Answered first by someone else: a client call goes ahead if their answer allowed it.
            if exc.code == "APPROVAL_NOT_PENDING" and exc.frame.get("decision") in ALLOWED:
                self._open(tool_use_id, True)
            raise
        if decision == "allow_session":
            name = self._names.get(tool_use_id)
            if name is not None:
                self._grants.add((answer.get("sessionId") or session_id or "", name))
        self._open(tool_use_id, decision in ALLOWED)
        return answer

    def _open(self, tool_use_id: str, go: bool) -> None:
        gate = self._gates.pop(tool_use_id, None)
        if gate is not None and not gate.done():
            gate.set_result(go)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _answer(self, request: ApprovalRequest) -> None:
        assert self._on_approval is not None
        try:
            decision = await self._on_approval(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the approval handler failed for %s; denying it", request.name)
            decision = "deny"
        finally:
            self._asking.pop(request.tool_use_id, None)
        if decision is None:
            return  # the caller answers later, with approve()
        try:
            await self.approve(request.tool_use_id, decision, request.session_id)
        except (ConflictError, NotFoundError) as exc:
            log.info("the approval of %s was not recorded: %s", request.name, exc)

    async def _client_call(self, call: ToolCall, gate: asyncio.Future[bool] | None) -> None:
        handler = self._handlers.get(call.name)
        if handler is None:
            # The protocol asks a client that cannot run a call to say so at once rather than let it time out.
            await self._send(call, f"This client has no handler for the tool {call.name!r}.", True)
            return
        if gate is not None and not await self._approved(call, gate):
            return
        try:
            content, is_error = result_content(await handler(call))
        except ToolError as exc:
            content, is_error = str(exc), True
        except Exception as exc:
            log.exception("the handler of tool %s failed", call.name)
            content, is_error = f"The tool failed in the client: {type(exc).__name__}: {exc}", True
        await self._send(call, content, is_error)

    async def _approved(self, call: ToolCall, gate: asyncio.Future[bool]) -> bool:
        if gate.done():
            return gate.result()
        if (call.session_id, call.name) in self._grants:
            self._open(call.tool_use_id, True)
            return True
        status = await self._status(call)
        if status in ("approved", "running"):
            self._open(call.tool_use_id, True)
        elif status != "pending":
            self._open(call.tool_use_id, False)  # denied, or over already
        return await gate

    async def _status(self, call: ToolCall) -> str | None:
        with contextlib.suppress(GatewayClientError):
            page = await self._client.request({"type": "session.history", "sessionId": call.session_id, "limit": 4})
            for row in page.get("toolCalls") or []:
                if row.get("toolUseId") == call.tool_use_id:
                    return str(row.get("status"))
        return "pending"  # unknown: wait for an answer through this client (or the gateway's result)

    async def _send(self, call: ToolCall, content: str | list[Any], is_error: bool) -> None:
        frame: Frame = {"type": "chat.tool.result", "toolUseId": call.tool_use_id, "content": content}
        if is_error:
            frame["isError"] = True
        try:
            await self._client.request(frame)
        except InvalidRequestError as exc:
            # Too long, or not valid content: the model learns why instead of the call timing out (in few words:
            # the gateway's limit on a result's length is not known here).
            log.warning("the gateway refused the result of %s: %s", call.name, exc)
            with contextlib.suppress(GatewayClientError):
                await self._client.request({**frame, "content": f"Result refused: {exc.code}", "isError": True})
        except (NotFoundError, ConnectionClosedError) as exc:
            log.info("the result of %s was not taken: %s", call.name, exc)  # timed out, cancelled, or gone
