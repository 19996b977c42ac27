"""The tool calls of a turn: each step's calls planned (which executor, which policy, the call bound and the repeat
guard), asked for approval where the policy says `ask`, run (concurrently, but calls sharing a `serial` key in
order), every change persisted (the stored history always pairs each call with a result) and every result sent as
it comes. A chat.cancel, a shutdown or the turn's time limit stops what is still open, saying so in its result."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from gateway.context.tool_config import ToolLimits
from gateway.tools.base import Content, OfferedTool, Toolbox, ToolFailure, ToolOutcome, capped

from .call_plan import DECLINED, STOPPED, Call, CallPlanner
from .services import Services
from .step_frames import StepIds, approval_frame, call_frame, result_frame

log = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]
Connected = Callable[[], bool]
APPROVAL_POLL_S = 1.0  # an answer given through another process (PostgreSQL) is seen within this


class TurnCalls:
    """One turn's tools and what its calls have done so far (for the bounds and the repeat guard)."""

    def __init__(
        self, s: Services, toolbox: Toolbox, limits: ToolLimits, session_id: str, send: Send, connected: Connected
    ) -> None:
        self.s = s
        self.limits = limits
        self.session_id = session_id
        self.send = send
        self.connected = connected
        self.planner = CallPlanner(toolbox, limits, session_id)
        self._grants_read = False

    @property
    def over_limit(self) -> bool:
        return self.planner.over_limit

    async def plan(self, blocks: list[dict[str, Any]], refuse: str | None) -> list[Call]:
        if not self._grants_read:
            self.planner.grants |= await self.s.store.tools.session_grants(self.session_id)
            self._grants_read = True
        return self.planner.plan(blocks, refuse, self.s.clock.now())

    def rows(self, calls: list[Call], ids: StepIds, message_id: str, result_message_id: str) -> list[dict[str, Any]]:
        return self.planner.rows(calls, ids, message_id, result_message_id)

    async def run(self, ids: StepIds, calls: list[Call], result_message_id: str, deadline: float) -> str:
        """Announce and run the step's calls; "done", or why they were stopped: "cancelled" | "interrupted" (from the
        turn's cancel reason) | "wall_clock"."""
        step = _Step(self, ids, result_message_id, calls)
        try:
            return await self._run(step, ids, calls, deadline)
        finally:
            step.forget()

    async def _run(self, step: _Step, ids: StepIds, calls: list[Call], deadline: float) -> str:
        for call in calls:
            await self.send(call_frame(ids, call.block, call.executor, call.policy))
        for call in calls:
            if call.status in ("error", "denied"):
                await step.result_frame(call, call.status, call.result or "", True, None)
            elif call.status == "pending" and call.expires_at is not None:
                await self.send(approval_frame(ids, call.block, call.executor, call.expires_at))
        groups: dict[str, list[Call]] = {}
        for call in calls:
            if call.status in ("approved", "pending"):
                key = call.tool.serial if call.tool is not None and call.tool.serial else call.row_id
                groups.setdefault(key, []).append(call)
        tasks = {asyncio.create_task(step.run_in_order(group)) for group in groups.values()}
        if not tasks:
            return "done"
        try:
            _, open_tasks = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            await step.stop(tasks, "cancelled")
            return "cancelled"
        if open_tasks:
            await step.stop(open_tasks, "wall_clock")
            return "wall_clock"
        for task in tasks:
            task.result()  # a failure to persist ends the turn with its error
        return "done"

    def granted(self, name: str) -> None:
        self.planner.grants.add(name)


class _Step:
    """One step's calls while they run."""

    def __init__(self, turn: TurnCalls, ids: StepIds, result_message_id: str, calls: list[Call]) -> None:
        self.t = turn
        self.ids = ids
        self.result_message_id = result_message_id
        self.open = {c.row_id: c for c in calls if c.status in ("pending", "approved")}
        self.writes: set[asyncio.Future[None]] = set()
        # Registered before the approval requests go out: an answer may come before its call's turn in a serial group.
        waits = turn.s.tools.waits
        self.approvals = {c.row_id: waits.expect(_approval_key(c)) for c in calls if c.status == "pending"}
        # A client may answer as soon as it reads the call (or its own approval): its result waits here until used.
        self.results = {c.row_id: waits.expect(_result_key(c)) for c in self.open.values() if c.executor == "client"}

    def forget(self) -> None:
        for call in self.open.values():
            self.t.s.tools.waits.forget(_approval_key(call))
            self.t.s.tools.waits.forget(_result_key(call))

    async def result_frame(self, call: Call, status: str, content: Content, is_error: bool, ms: int | None) -> None:
        call.reported = True
        await self.t.send(result_frame(self.ids, call.block, status, content, is_error, ms))

    def _now(self) -> datetime:
        return self.t.s.clock.now()

    async def _update(self, call: Call, **values: Any) -> None:
        """Persist a change of the call. The write finishes even if the call is stopped meanwhile; `stop` waits for
        it, so the last word on a call's row is always the last one written."""
        call.status = values.get("status", call.status)
        if "result" in values:
            call.result, call.is_error = values["result"], values.get("is_error", False)
        write = asyncio.ensure_future(self.t.s.store.tools.update_call(call.row_id, self.result_message_id, **values))
        self.writes.add(write)
        write.add_done_callback(self.writes.discard)
        await asyncio.shield(write)

    async def run_in_order(self, calls: list[Call]) -> None:
        for call in calls:
            await self._run(call)
            self.t.s.tools.waits.forget(_approval_key(call))
            self.t.s.tools.waits.forget(_result_key(call))
            self.open.pop(call.row_id, None)

    async def _run(self, call: Call) -> None:
        assert call.tool is not None
        if call.status == "pending":
            decision = await self._approval(call)
            if decision not in ("allow_once", "allow_session"):
                text = DECLINED
                if decision == "expired":
                    text = (
                        f"Not run: no one answered the approval request within {self.t.limits.approval_timeout_s:g} s "
                        "(treated as declined)."
                    )
                await self._update(call, status="denied", result=text, is_error=True, finished_at=self._now())
                await self.result_frame(call, "denied", text, True, None)
                return
            if decision == "allow_session":
                self.t.granted(call.tool.name)
            await self._update(call, status="approved")
        call.started = time.monotonic()
        await self._update(call, status="running", started_at=self._now())
        outcome = capped(await self._execute(call, call.tool), self.t.limits.max_result_chars)
        ms = int((time.monotonic() - call.started) * 1000)
        status = "error" if outcome.is_error else "done"
        await self._update(
            call,
            status=status,
            result=outcome.content,
            is_error=outcome.is_error,
            finished_at=self._now(),
            duration_ms=ms,
        )
        await self.result_frame(call, status, outcome.content, outcome.is_error, ms)

    async def _execute(self, call: Call, tool: OfferedTool) -> ToolOutcome:
        arguments = call.block.get("input")
        try:
            if tool.run is not None:
                return await tool.run(arguments if isinstance(arguments, dict) else {})
            return await self._client_result(call)
        except ToolFailure as exc:
            return ToolOutcome(str(exc), True)
        except Exception as exc:
            log.exception("tool %s failed", tool.name)
            return ToolOutcome(f"The tool failed inside the gateway ({type(exc).__name__}).", True)

    async def _client_result(self, call: Call) -> ToolOutcome:
        future = self.results[call.row_id]
        if not future.done() and not self.t.connected():
            return ToolOutcome("Not run: the client that runs this tool is not connected.", True)
        try:
            async with asyncio.timeout(self.t.limits.client_timeout_s):
                outcome: ToolOutcome = await future
                return outcome
        except TimeoutError:
            return ToolOutcome(f"The client returned no result within {self.t.limits.client_timeout_s:g} s.", True)

    async def _approval(self, call: Call) -> str:
        """The answer to the call's approval request: allow_once | allow_session | deny | expired."""
        assert call.deadline is not None
        store, future = self.t.s.store.tools, self.approvals[call.row_id]
        while True:
            left = call.deadline - time.monotonic()
            if left <= 0:
                return await store.expire(call.row_id, self._now()) or "expired"
            try:
                decision: str = await asyncio.wait_for(asyncio.shield(future), min(left, APPROVAL_POLL_S))
                return decision
            except TimeoutError:
                found = await store.decision(call.row_id)  # answered through another process
                if found is not None:
                    return found

    async def stop(self, tasks: set[asyncio.Task[None]], why: str) -> None:
        """Stop the calls still open, and give each the result that says what became of it."""
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        not_run, running = STOPPED.get(why, STOPPED["interrupted"])
        for group_task in tasks:
            if not group_task.cancelled() and group_task.exception() is not None:
                log.warning("a tool call failed while being stopped: %r", group_task.exception())
        if self.writes:
            await asyncio.wait(set(self.writes))
        for call in list(self.open.values()):
            ms = int((time.monotonic() - call.started) * 1000) if call.started is not None else None
            if call.status not in ("pending", "approved", "running"):
                if not call.reported:  # it finished just as it was stopped
                    await self.result_frame(call, call.status, call.result or "", call.is_error, ms)
                continue
            text = running if call.status == "running" else not_run
            await self._update(
                call, status="interrupted", result=text, is_error=True, finished_at=self._now(), duration_ms=ms
            )
            await self.result_frame(call, "interrupted", text, True, ms)


def _approval_key(call: Call) -> str:
    return f"approval:{call.block['id']}"


def _result_key(call: Call) -> str:
    return f"result:{call.block['id']}"
