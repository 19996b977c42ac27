"""One model request of a turn, relayed to the client as it streams: retried (with backoff, honouring `retry-after`)
while nothing has been relayed yet, never after; each failed attempt is recorded before the next one starts."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable

from gateway import errors
from gateway.billing.accounting import Priced
from gateway.context.assembly import Assembled
from gateway.context.request_body import request_body
from gateway.protocol import RequestId
from gateway.store import TurnRows
from gateway.store.usage_row import UsageRow

from .metrics import TurnObserver
from .reply import Reply
from .services import Services
from .spend import estimate_output, let_begun_go, provisional_record
from .turn_end import record_failed_attempt, to_the_end
from .upstream import map_error, retry_after_s

SendRaw = Callable[[str], Awaitable[None]]


class Relay:
    """The request's reply so far (`reply`), when its first token came, and whether anything reached the client:
    what the turn saves and accounts for however the request ends."""

    def __init__(
        self,
        services: Services,
        obs: TurnObserver,
        rows: TurnRows,
        assembled: Assembled,
        request_id: RequestId,
        send_raw: SendRaw,
        started: float,
        *,
        step: int = 1,
        stream_tool_input: bool = False,
        reservation_ids: tuple[str, ...] = (),
    ) -> None:
        self.s = services
        self.obs = obs
        self.rows = rows
        self.assembled = assembled
        self.send_raw = send_raw
        self.started = started
        self.step = step
        self.stream_tool_input = stream_tool_input
        self.reply = Reply()
        # When the upstream request behind `reply` was sent: the moment it is priced at (docs/PRICING.md).
        self.sent_at = services.clock.now()
        self.first_token_ms: int | None = None
        self.relayed = False
        self.failed_attempts: list[Priced] = []  # attempts that were billed, then retried: each has its usage row
        # The budget reservations this request is held by: its usage row, once written, counts part of them.
        self.reservation_ids = reservation_ids
        self._begun: asyncio.Future[None] | None = None  # the provisional usage row's write (chat/spend.py)
        self._begun_for: Reply | None = None
        rid = json.dumps(request_id)
        ids = f'"id":{rid},"requestId":{rid},"sessionId":"{rows.session.id}","messageId":"{rows.assistant_message.id}"'
        self._delta_prefix = '{"type":"chat.stream.delta",' + ids + ',"delta":'
        self._thinking_prefix = '{"type":"chat.stream.thinking",' + ids + ',"delta":'
        self._tool_input_prefix = '{"type":"chat.tool.input.delta",' + ids + f',"step":{step},"toolUseId":'

    async def run(self, touch: Callable[[], None]) -> None:
        """Stream the request to its `message_stop`, calling `touch` after each relayed delta (the checkpoint clock).
        Raises the mapped GatewayError when it fails for good."""
        s = self.s
        attempt = 0
        body = request_body(self.assembled)
        while True:
            self.reply = Reply()
            self.sent_at = s.clock.now()
            self._begun = None
            try:
                # `async with` closes the upstream response the moment we stop reading, cancel included, so
                # Anthropic stops generating (and billing) at once.
                self.obs.upstream_request()
                async with await s.upstream.stream(body) as stream:
                    self.obs.upstream_headers()
                    async for event in stream:
                        received = time.perf_counter()
                        out = self.reply.feed(event)
                        if out is None:
                            if self._begun is None and self.reply.message_id is not None:
                                self._begin_usage()  # the first event: from now on the request has its usage row
                            continue
                        kind, chunk = out
                        if kind == "tool_input":
                            if not self.stream_tool_input:
                                continue
                            frame = self._tool_input_frame(event["index"], chunk)
                        else:
                            prefix = self._delta_prefix if kind == "text" else self._thinking_prefix
                            frame = prefix + json.dumps(chunk, ensure_ascii=False) + "}"
                        if self.first_token_ms is None:
                            self.first_token_ms = int((time.monotonic() - self.started) * 1000)
                        self.relayed = True
                        # Awaited: a slow reader slows its own stream (and its upstream read), nothing else.
                        await self.send_raw(frame)
                        self.obs.relayed(received)
                        touch()
                if not self.reply.finished:
                    raise errors.UpstreamError("the upstream stream ended before message_stop")
                return
            except Exception as exc:
                mapped = map_error(exc)
                wait = retry_after_s(exc)
                if wait is not None:
                    mapped.details.setdefault("retryAfter", wait)
                if (
                    self.relayed
                    or not mapped.retryable
                    or attempt >= s.settings.upstream_max_retries
                    # Waiting longer than we are willing to would hold the client hostage: fail fast and let it
                    # decide, with `retryAfter` in the frame.
                    or (wait is not None and wait > s.settings.upstream_retry_max_s)
                ):
                    raise mapped from exc
                # Forget the failed attempt before recording it: if we are cancelled while saving it or during the
                # backoff, settle() must not record the same upstream request a second time.
                failed, self.reply = self.reply, Reply()
                # Its final row (its provisional row, if written, made final); a cancel meanwhile waits for it.
                priced = await to_the_end(self._record_failed(failed))
                if priced is not None:
                    self.failed_attempts.append(priced)
                attempt += 1
                await asyncio.sleep(self._backoff(attempt, wait))

    async def _record_failed(self, failed: Reply) -> Priced | None:
        self.usage_ended()
        return await record_failed_attempt(
            self.s, self.rows, failed, self.assembled, self.sent_at, self.started, self.step
        )

    def _begin_usage(self) -> None:
        """Write the provisional row in the background: neither the relay nor the final row's write waits for it
        (`usage_ended`)."""
        record = provisional_record(
            self.s, self.rows, self.assembled.model, self.reply, self.sent_at, self.started, self.step
        )
        reply = self._begun_for = self.reply
        self._begun = asyncio.ensure_future(
            self.s.store.usage.begin(record, self.reservation_ids, lambda: not reply.ended)
        )

    def usage_ended(self) -> None:
        """The request has ended: a provisional row not yet written is no longer wanted (spend.let_begun_go)."""
        if self._begun_for is not None:
            self._begun_for.ended = True
        let_begun_go(self._begun)

    async def provisional(self) -> UsageRow | None:
        """The request's usage row as known now, output estimated from what was generated; None before its first
        event."""
        reply = self.reply
        if reply.message_id is None:
            return None
        await estimate_output(self.s, self.assembled.model, reply)
        return provisional_record(self.s, self.rows, self.assembled.model, reply, self.sent_at, self.started, self.step)

    def _tool_input_frame(self, index: int, chunk: str) -> str:
        block = self.reply.block(index) or {}
        ids = json.dumps(block.get("id")) + ',"name":' + json.dumps(block.get("name"))
        return self._tool_input_prefix + ids + ',"delta":' + json.dumps(chunk, ensure_ascii=False) + "}"

    def _backoff(self, attempt: int, server_wait: float | None) -> float:
        cfg = self.s.settings
        if server_wait is not None:
            return server_wait  # the server said when; at most upstream_retry_max_s (checked by the caller)
        backoff: float = cfg.upstream_retry_base_s * 2 ** (attempt - 1)
        return min(cfg.upstream_retry_max_s, backoff) * random.uniform(0.5, 1)
