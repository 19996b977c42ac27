"""The model requests of one `chat.send` turn. A reply that stops with `tool_use` has its calls run and answered in
one user message of `tool_result` blocks, then the turn continues; `pause_turn` is continued as it is. Bounds (the
agent's `[tools]` settings): model requests, tool calls, wall clock, and the repeat guard in `calls`. When a bound is
hit, open calls get error results and one last request with `tool_choice: none` lets the model sum up; the end
frame's `boundHit` says which bound it was.

Each request's reply is its own message with its own usage row (numbered by `step`), saved before anything else
happens; the end frame sums them all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from gateway import errors
from gateway.billing.accounting import Priced
from gateway.context.assembly import Assembled, assemble
from gateway.context.inspection import estimate_input_tokens, measure
from gateway.store import HistoryItem, TurnRows
from gateway.store.chats import new_id
from gateway.store.history import version_at

from .calls import TurnCalls
from .relay import Relay
from .request import CANCEL_STATUS, Turn, stream_request
from .step_frames import StepIds, Totals, step_end_frame
from .turn_end import Accounted, account, settle
from .turn_frames import end_frame, error_with

ENDED_TEXT = "Not run: the reply ended before its calls could be answered."
OVER_TEXT = "Not run: this turn's tool calls are over; answer with what you have."


class ToolLoop:
    def __init__(self, turn: Turn, rows: TurnRows, assembled: Assembled, estimate: int) -> None:
        assert turn.ctx is not None
        self.turn, self.s, self.ctx = turn, turn.s, turn.ctx
        self.rows, self.assembled, self.estimate = rows, assembled, estimate
        self.limits = self.ctx.workspace.tool_config.limits
        self.totals = Totals(assembled.model)
        # Sent through the turn at each call: a client that reconnects and takes the turn over gets the rest.
        self.calls = TurnCalls(
            self.s, self.ctx.toolbox, self.limits, rows.session.id, lambda frame: turn.send(frame), turn.connected
        )
        user = rows.user_message
        self.history = [*self.ctx.history, HistoryItem(user.id, "user", user.content, version_at(user.updated_at))]
        self.next_seq = rows.assistant_message.seq + 1
        self.started = time.monotonic()
        self.deadline = self.started + self.limits.max_seconds
        self.bound: str | None = None
        self.results: tuple[str, str] | None = None  # the open tool_result message: (id, status it closes with)

    async def run(self) -> dict[str, Any]:
        """Every request of the turn; returns its terminal frame."""
        step, final = 1, False
        while True:
            ending, relay = await stream_request(self.turn, self.rows, self.assembled, step)
            if step == 1:
                self.started = ending.started  # the turn's duration counts from its first request, as its row does
            reply = relay.reply
            for attempt in relay.failed_attempts:
                self.totals.add(attempt)
            self.totals.steps += 1
            paused = reply.stop_reason == "pause_turn" and not reply.tool_uses
            if ending.status != "complete" or not (reply.tool_uses or paused):
                hold = self.turn.holder(self.rows)
                accounted = await settle(self.s, self.rows, reply, self.assembled, self.estimate, ending, step, hold)
                self.totals.add(accounted.priced)
                stop_reason = reply.stop_reason if ending.status == "complete" else ending.status
                # Measured as the last row's duration was, so a one-request turn's frame and row agree exactly.
                ms = int((ending.started - self.started) * 1000) + accounted.duration_ms
                frame = self._end(ending.status, stop_reason, ending.failure, reply.text, ms)
                if not accounted.saved:
                    frame["pendingSave"] = True
                return frame
            accounted = account(self.s, self.rows, reply, self.assembled, self.estimate, ending, step)
            if paused:
                await self._save_step(step, relay, accounted, [], None)
                status = "complete" if step >= self.limits.max_requests else None
                self.bound = self.bound or ("requests" if status else None)
            else:
                status = await self._tool_step(step, relay, accounted, final)
            if status is not None:
                return self._end(status, reply.stop_reason if status == "complete" else status, None, "")
            final = final or self.bound is not None
            if not await self._next(final):
                return self._end("complete", reply.stop_reason, None, "")
            step += 1

    async def _save_step(
        self, step: int, relay: Relay, accounted: Accounted, calls: list[dict[str, Any]], results_id: str | None
    ) -> StepIds:
        """The step's reply, usage row, calls and tool_result message in one transaction; then chat.step.end."""
        reply, ids = relay.reply, StepIds(self.turn.rid, self.rows.session.id, self.rows.assistant_message.id, step)
        finished = {
            "message_id": ids.message_id,
            "content": reply.content(complete=True),
            "text": reply.text,
            "status": "complete",
            "stop_reason": reply.stop_reason,
            "error_code": None,
        }
        new = [self._message(results_id, "user")] if results_id is not None else []
        saved = await asyncio.shield(
            self.s.store.tools.save_step(
                session_id=ids.session_id,
                reply=finished,
                usage=accounted.record,
                calibration=accounted.calibration,
                calls=calls,
                new_messages=new,
            )
        )
        self.s.store.chats.forget_turn(self.turn.first_reply_id)  # the turn's rows are more than a snapshot knows
        self.history.append(saved.reply)
        self.totals.add(accounted.priced)
        self.totals.tool_calls += len(calls)
        await self.turn.send(
            step_end_frame(ids, reply.stop_reason, accounted.priced, accounted.duration_ms, len(calls))
        )
        return ids

    async def _tool_step(self, step: int, relay: Relay, accounted: Accounted, final: bool) -> str | None:
        """Save the step with its calls and run them: None to go on, or the status the turn ends with."""
        reply = relay.reply
        # Nothing to continue: the model stopped for another reason, or this was the last request allowed.
        ends = final or reply.stop_reason != "tool_use" or step >= self.limits.max_requests
        refuse = (OVER_TEXT if final else ENDED_TEXT) if ends else self._bound_refusal(step)
        if reply.stop_reason == "tool_use" and step >= self.limits.max_requests and not final:
            self.bound, refuse = "requests", self._bound_refusal(step)
        planned = await self.calls.plan(reply.tool_uses, refuse)
        if self.calls.over_limit:
            self.bound = self.bound or "tool_calls"
        results_id = new_id()
        ids = StepIds(self.turn.rid, self.rows.session.id, self.rows.assistant_message.id, step)
        rows = self.calls.rows(planned, ids, ids.message_id, results_id)
        await self._save_step(step, relay, accounted, rows, results_id)
        self.turn.phase = "tools"
        why = await self.calls.run(ids, planned, results_id, self.deadline)
        if why == "cancelled":
            why = CANCEL_STATUS.get(self.turn.cancel_reason or "cancelled", "cancelled")
        if why == "wall_clock":
            self.bound = self.bound or "wall_clock"
        stopped = why in ("cancelled", "interrupted", "disconnected")
        self.results = (results_id, why if stopped else "complete")
        if not (ends or stopped) and not self.turn.connected() and self.s.settings.on_disconnect != "finish":
            stopped, why = True, "disconnected"  # no one left to read a next reply: do not pay for one
        if ends or stopped:
            await self._continue(None)
            return why if stopped else "complete"
        return None

    def _bound_refusal(self, step: int) -> str | None:
        if step >= self.limits.max_requests - 1:
            self.bound = "requests"
            return f"Not run: this turn reached its limit of {self.limits.max_requests} model requests. " + (
                "Answer with what you have."
            )
        if time.monotonic() >= self.deadline:
            self.bound = "wall_clock"
            return "Not run: this turn reached its time limit. Answer with what you have."
        return None

    async def _continue(self, next_reply: dict[str, Any] | None) -> None:
        results_id, status = self.results if self.results is not None else (None, "complete")
        self.results = None
        item, message = await asyncio.shield(
            self.s.store.tools.continue_turn(
                session_id=self.rows.session.id, result_message_id=results_id, status=status, next_reply=next_reply
            )
        )
        if item is not None:
            self.history.append(item)
        if message is not None:
            self.rows = dataclasses.replace(self.rows, assistant_message=message)

    async def _next(self, final: bool) -> bool:
        """Assemble the next request and start its reply; False when the turn must end here (budget, window)."""
        ctx, turn = self.ctx, self.turn
        if self.results is not None:
            await self._continue(None)  # the results are final: the next request carries them
        assembled = assemble(ctx.workspace, self.history, pending=None, model=self.assembled.model,
                             max_tokens=ctx.max_tokens, tools=ctx.toolbox.definitions,
                             cache=self.s.assembly)  # fmt: skip
        if final:
            assembled = dataclasses.replace(assembled, params={**assembled.params, "tool_choice": {"type": "none"}})
        estimate = estimate_input_tokens(await measure(assembled, self.s.tokens))
        await turn.release_budget()  # the step's usage row counts instead now
        try:
            await turn.check_window(assembled.model, estimate)
            await turn.reserve_budget(ctx.workspace, assembled.model, estimate, ctx.max_tokens)
        except errors.ContextTooLarge:
            self.bound = self.bound or "context_window"
        except errors.BudgetExceeded:
            self.bound = self.bound or "budget"
        else:
            await self._continue(self._message(new_id(), "assistant"))
            self.assembled, self.estimate = assembled, estimate
            return True
        return False

    def _message(self, message_id: str, role: str) -> dict[str, Any]:
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        return {
            "id": message_id,
            "session_id": self.rows.session.id,
            "seq": seq,
            "role": role,
            "content": [],
            "text": "",
            "model": self.assembled.model if role == "assistant" else None,
            "status": "streaming",
            "stop_reason": None,
            "error_code": None,
            "idempotency_key": None,
        }

    def _end(
        self,
        status: str,
        stop_reason: str | None,
        failure: errors.GatewayError | None,
        text: str,
        duration_ms: int | None = None,
    ) -> dict[str, Any]:
        if duration_ms is None:
            duration_ms = int((time.monotonic() - self.started) * 1000)
        rows, totals = self.rows, self.totals
        priced: Priced = totals.priced()
        self.turn.obs.finished(
            session_id=rows.session.id,
            message_id=rows.assistant_message.id,
            agent_id=rows.session.agent_id,
            model=totals.model,
            status=status,
            stop_reason=stop_reason,
            usage=totals.usage,
            cost_nano=priced.cost.total if priced.cost is not None else None,
            duration_ms=duration_ms,
            error_code=failure.code if failure else None,
        )
        if failure is not None:
            return error_with(
                failure, self.turn.rid, sessionId=rows.session.id, messageId=rows.assistant_message.id, partialText=text
            )
        frame = end_frame(self.turn.rid, rows, stop_reason, priced, duration_ms, status)
        frame.update(requests=totals.requests, steps=totals.steps, toolCalls=totals.tool_calls, boundHit=self.bound)
        return frame
