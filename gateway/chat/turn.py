"""One chat turn's whole life: lock, persist the user turn, assemble, stream, relay, persist the reply, account,
release. Whatever happens, the client gets exactly one terminal frame: `chat.stream.end` or `error`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from gateway import errors
from gateway.billing.budgets import Reservation
from gateway.context.assembly import Assembled, assemble
from gateway.context.context_config import ContextConfig
from gateway.context.inspection import calibrated, calibration_ratio, estimate_input_tokens, measure
from gateway.context.window import effective_window, too_large_message
from gateway.context.workspace import Workspace
from gateway.protocol import Request, RequestId
from gateway.store import CancelledAfterCommit, HistoryItem, TurnRows
from gateway.store.chats import new_id
from gateway.store.models import ApiKey, ChatSession
from gateway.store.snapshots import StaleSnapshot

from .compact_job import Before, compact_if_due
from .locks import SessionLease
from .relay import SendRaw
from .request import CANCEL_STATUS, TurnContext
from .services import Services
from .tool_loop import ToolLoop
from .turn_end import write_begun
from .turn_frames import duplicate_frame, error_with, model_for, session_key

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class Turn:
    def __init__(
        self, services: Services, request: Request, send: Send, send_raw: SendRaw, key: ApiKey | None = None
    ) -> None:
        self.s = services
        self.request = request
        self.key = key  # the gateway key the connection authenticated with: its caps apply, its rows name it
        self.send = send
        self.send_raw = send_raw
        self.session_id: str | None = request.get("sessionId")
        self.cancel_reason: str | None = None  # "cancelled" | "client_gone" | "shutdown", set before task.cancel()
        self._lease: SessionLease | None = None
        self._budget: Reservation | None = None
        self.obs = services.metrics.turn(request.id, request.get("content"))
        self.over = False  # the terminal frame is on its way: this connection may start its next turn
        self.ctx: TurnContext | None = None
        self.first_reply_id = ""
        # "streaming" (a model request) or "tools" (running calls, waiting on approvals): a client that leaves
        # during "tools" does not cancel the turn, so a pending approval can still be answered after a reconnect.
        self.phase = "starting"
        self.detached = False  # its connection is gone; `attach` gives it another
        self.task: asyncio.Task[None] | None = None

    @property
    def rid(self) -> RequestId:
        return self.request.id

    async def run(self) -> None:
        try:
            await self._run()
        except errors.GatewayError as exc:
            self.obs.rejected(exc.code)
            await self._end(error_with(exc, self.rid, sessionId=self.session_id))
        except asyncio.CancelledError:
            self.obs.rejected(errors.Cancelled.code)
            # Cancelled before anything was persisted: nothing to save, but the client still gets its terminal frame.
            cancelled = errors.Cancelled("the request was cancelled")
            await self._end(error_with(cancelled, self.rid, sessionId=self.session_id))
        except Exception as exc:
            log.exception("turn failed unexpectedly")
            self.obs.rejected(errors.InternalError.code)
            await self._end(error_with(errors.InternalError(f"internal error: {type(exc).__name__}"), self.rid))
        finally:
            await self._release()

    async def _end(self, frame: dict[str, Any]) -> None:
        """Send the terminal frame, releasing the session first: the client may send its next message, through this
        process or another, the moment it reads this frame (with PostgreSQL the release is a round trip)."""
        await self._release()
        self.over = True
        await self.send(frame)

    async def _release(self) -> None:
        await self.release_budget()  # after settle(): the usage row now counts instead
        lease, self._lease = self._lease, None
        if lease is not None:
            await lease.release()

    async def release_budget(self) -> None:
        budget, self._budget = self._budget, None
        if budget is not None:
            await budget.release()

    def reservation_ids(self) -> tuple[str, ...]:
        return self._budget.ids if self._budget is not None else ()

    async def reserve_budget(self, workspace: Workspace, model: str, estimate: int, max_tokens: int) -> None:
        """Hold the next request's worst case against the agent's caps and the key's (BUDGET_EXCEEDED when it could
        pass one)."""
        self._budget = await self.s.budgets.reserve(workspace, model, estimate, max_tokens, key=self.key)

    def connected(self) -> bool:
        return not self.detached

    def detach(self) -> None:
        """The client left while the turn runs tools: frames go nowhere until a connection `attach`es."""
        self.detached = True

        async def nowhere(_: Any) -> None:
            return None

        self.send, self.send_raw = nowhere, nowhere

    def attach(self, send: Send, send_raw: SendRaw) -> None:
        self.send, self.send_raw, self.detached = send, send_raw, False

    async def _run(self) -> None:
        s, req = self.s, self.request
        key: str | None = req.get("idempotencyKey")
        if key is not None and await self._answer_duplicate(key):
            return
        if self.session_id is not None:
            try:
                self._lease = await s.locks.acquire(self.session_id)
            except errors.StreamInProgress:
                # A resend racing its original: if the original is stored by now, its state is the answer.
                if key is not None and await self._answer_duplicate(key):
                    return
                raise
        try:
            begun = await self._begin(key, from_snapshot=True)
        except StaleSnapshot:
            # Another process wrote to the session since this one last did; begin_turn wrote nothing.
            await self.release_budget()
            begun = await self._begin(key, from_snapshot=False)
        if begun is not None:
            await self._stream(*begun)

    async def _begin(self, key: str | None, *, from_snapshot: bool) -> tuple[TurnRows, Assembled, int] | None:
        """Read, assemble, check, and persist the user turn; None when a duplicate send was answered instead."""
        s, req = self.s, self.request
        session: ChatSession | None = None
        history: list[HistoryItem] = []
        snapshot = s.store.chats.snapshot(self.session_id) if self.session_id and from_snapshot else None
        if snapshot is not None:
            session, history = snapshot.session, snapshot.history
        elif self.session_id is not None:
            session, history = await s.store.chats.session_with_history(self.session_id)
        if self.session_id is not None:
            wanted_agent = req.get("agentId")
            if session is None or (wanted_agent is not None and wanted_agent != session.agent_id):
                raise errors.SessionNotFound(f"session {self.session_id} does not exist", sessionId=self.session_id)
        agent_id = session.agent_id if session is not None else (req.get("agentId") or "default")
        workspace = s.workspaces.load(agent_id)
        model, _ = model_for(req.get("model"), session, workspace.model, s.settings.default_model)
        max_tokens: int = req.get("maxTokens") or workspace.max_tokens or s.settings.default_max_tokens
        await self._recover_orphans(history)
        toolbox = await s.tools.toolbox(workspace, req.get("tools"))
        self.ctx = TurnContext(workspace, toolbox, history, max_tokens)
        pending, tools = req.get("content"), toolbox.definitions
        assembled = assemble(workspace, history, pending=pending, model=model, max_tokens=max_tokens, tools=tools,
                             cache=s.assembly)  # fmt: skip
        estimate = estimate_input_tokens(await measure(assembled, s.tokens))
        if session is not None:
            before = Before(session, history, workspace, model, max_tokens, pending, tools, estimate)
            compacted = await compact_if_due(s, self.send, self.rid, self.key, before)
            if compacted is not None:  # the session moved on: what this turn was assembled from is read afresh
                session, history, assembled, estimate = compacted
                snapshot, self.ctx = None, TurnContext(workspace, toolbox, history, max_tokens)
        await self.check_window(model, estimate)
        s.upstream.client()  # MISSING_API_KEY before anything is written
        await self.reserve_budget(workspace, model, estimate, max_tokens)  # BUDGET_EXCEEDED, ditto
        if session is None:
            # Locked before its rows exist, so no other process's start-up recovery takes its reply for an orphan.
            new_session_id = new_id()
            self._lease = await s.locks.acquire(new_session_id)
        begin = s.store.chats.begin_turn(
            session_id=session.id if session is not None else new_session_id,
            create=session is None,
            agent_id=agent_id,
            model=model,
            content=req.get("content"),
            idempotency_key=key,
            history=history,
            snapshot_count=snapshot.session.message_count if snapshot is not None else None,
            key_id=self.key.id if self.key is not None else None,
        )
        try:
            rows = await write_begun(s, begin, self._cancel_status, f"turn-{self.rid}-begin")
        except CancelledAfterCommit as cancelled:
            self.session_id = cast(TurnRows, cancelled.result).session.id  # its error frame names the session
            raise
        except errors.DuplicateRequest:
            # Another send with this key won the race to the unique index: answer with its state, start nothing.
            if key is not None and await self._answer_duplicate(key):
                return None
            raise
        self.session_id = rows.session.id
        self.first_reply_id = rows.assistant_message.id
        return rows, assembled, estimate

    def _cancel_status(self) -> str:
        return CANCEL_STATUS.get(self.cancel_reason or "cancelled", "cancelled")

    async def _recover_orphans(self, history: list[HistoryItem]) -> None:
        """We hold the session's lock, so a reply in it still `streaming` was left by a process that died."""
        orphans = [m.id for m in history if m.status == "streaming"]
        if orphans:
            recovered = await self.s.store.chats.recover_interrupted(message_ids=orphans)
            await self.s.store.usage.recover_interrupted(session_id=self.session_id)
            log.warning("session %s: marked %d replies of a dead process interrupted", self.session_id, recovered)

    async def check_window(self, model: str, estimate: int) -> None:
        config = self.ctx.workspace.context if self.ctx is not None else ContextConfig()
        window = effective_window(self.s.prices, model, config)
        if window is None:
            return
        ratio = calibration_ratio(await self.s.store.chats.calibration(model))
        expected = calibrated(estimate, ratio)
        if expected > window:
            raise errors.ContextTooLarge(
                too_large_message(model, expected, window, auto=config.auto_compact),
                tokenEstimate=expected,
                contextWindow=window,
                overBy=expected - window,
            )

    async def _answer_duplicate(self, key: str) -> bool:
        found = await self.s.store.chats.find_by_idempotency_key(key)
        if found is None:
            return False
        user, reply = found
        await self._end(duplicate_frame(self.rid, user, reply))
        return True

    async def announce(self, rows: TurnRows, model: str) -> None:
        if rows.session_created:
            await self.send(
                {
                    "type": "session.created",
                    "id": self.rid,
                    "sessionId": rows.session.id,
                    "sessionKey": session_key(rows.session),
                    "agentId": rows.session.agent_id,
                    "createdAt": rows.session.created_at,
                }
            )
        await self.send(
            {
                "type": "chat.stream.start",
                "id": self.rid,
                "sessionId": rows.session.id,
                "messageId": rows.assistant_message.id,
                "model": model,
            }
        )

    async def _stream(self, rows: TurnRows, assembled: Assembled, estimate: int) -> None:
        """From here on the reply row exists, so every way out goes through the loop's saves, which set its status."""
        self.s.live_turns[rows.session.id] = self
        try:
            frame = await ToolLoop(self, rows, assembled, estimate).run()
        finally:
            self.s.live_turns.pop(rows.session.id, None)
        await self._end(frame)

    def holder(self, rows: TurnRows) -> Callable[[Callable[[], Awaitable[None]]], None]:
        """Where the last reply's save goes when the database stays unavailable past its retries (held.py)."""

        def hold(save: Callable[[], Awaitable[None]]) -> None:
            # The reply could not be saved yet: its save, and the session's lock with it, outlive this turn.
            lease, self._lease = self._lease, None
            self.s.held.hold(rows.assistant_message.id, save, lease)

        return hold


__all__ = ["Turn", "new_id"]
