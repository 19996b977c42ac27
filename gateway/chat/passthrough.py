"""One request of the Anthropic-compatible HTTP API (docs/HTTP_API.md), from admission to its accounting: the same
budgets, session rows, usage rows and upstream client as a chat.send, with the request's body sent upstream exactly as
it came. Its session is the stored conversation it extends (gateway/chat/transcript.py), or the one its
`x-agentspace-session` header names, or a new one.

    async with messages_exchange(Passthrough(services, call)) as turn:
        ...relay turn.exchange's status, headers and chunks() (or await its read())...

Leaving the block saves the reply and its usage row, however the exchange ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic

from gateway import errors
from gateway.billing.budgets import Reservation
from gateway.store import NewMessage, TailMoved, TurnRows
from gateway.store.chats import new_id
from gateway.store.models import ApiKey

from .locks import SessionLease
from .passthrough_stream import Exchange
from .services import Services
from .spend import LiveUsage, billed_usage
from .transcript import base_hash, blocks_of, extend, message_hash, prefix_hashes, stored_blocks, text_of
from .turn_end import saved_through_outage, to_the_end, write_begun
from .turn_frames import usage_record
from .upstream import map_error

log = logging.getLogger(__name__)
# Lookups of the session a request continues: a stale remembered tail costs one more, which asks the database.
_LOOKUPS = 3


@dataclass(frozen=True, slots=True)
class ApiCall:
    """A /v1/messages request as the HTTP edge received and checked it."""

    raw: bytes  # the body, sent upstream as is
    body: dict[str, Any]  # the same, parsed: read, never changed
    headers: dict[str, str]  # the client's anthropic-* headers, forwarded
    params: dict[str, str]  # the query (`?beta=true`), forwarded
    key: ApiKey | None
    agent_id: str
    session_hint: str | None  # x-agentspace-session
    request_id: str


def cache_mode(raw: bytes) -> str:
    """The dearest prompt-cache write the request may cause, for its budget worst case."""
    if b'"1h"' in raw:
        return "1h"
    return "5m" if b"cache_control" in raw else "off"


class Passthrough:
    def __init__(self, services: Services, call: ApiCall) -> None:
        self.s = services
        self.call = call
        self.model = str(call.body.get("model"))
        self.obs = services.metrics.turn(call.request_id)
        self.rows: TurnRows | None = None
        self.hashes: list[str] = []
        self.exchange: Exchange | None = None
        self.failure: errors.GatewayError | None = None
        self.client_gone = False
        self.interrupted = False
        self.started = time.monotonic()
        self.sent_at = services.clock.now()
        self._lease: SessionLease | None = None
        self._budget: Reservation | None = None
        self._live: LiveUsage | None = None  # the provisional usage row

    @property
    def session_id(self) -> str | None:
        return self.rows.session.id if self.rows is not None else None

    async def admit(self) -> None:
        """Refuse (GatewayError, nothing written) or persist the request's new messages and an empty reply."""
        s, call = self.s, self.call
        workspace = s.workspaces.load(call.agent_id)
        s.upstream.client()  # MISSING_API_KEY before anything is written
        max_tokens = call.body.get("max_tokens")
        max_tokens = max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else s.settings.default_max_tokens
        # The prompt, judged by its bytes: about 4 per token in JSON; the budget scales it by what Anthropic reported.
        estimate = len(call.raw) // 4
        try:
            self._budget = await s.budgets.reserve(
                workspace, self.model, estimate, max_tokens, key=call.key, cache_mode=cache_mode(call.raw)
            )
            messages: list[dict[str, Any]] = call.body["messages"]
            key_id = call.key.id if call.key is not None else None
            base = base_hash(key_id, call.agent_id, call.body.get("system"), call.body.get("tools"))
            self.hashes = prefix_hashes(base, messages)
            self.rows = await self._begin(messages)
        except BaseException:
            await self.release()
            raise

    async def _begin(self, messages: list[dict[str, Any]]) -> TurnRows:
        if self.call.session_hint is not None:
            return await self._begin_named(self.call.session_hint, messages)
        # A tail this process remembers may be stale: another process (`serve --workers N`, or behind a balancer)
        # served the conversation's last request. The write then finds the session moved on, the memory is dropped,
        # and the next lookup asks the database. Busy (the same conversation sent twice at once), or moved on since
        # the database said otherwise: the request forks instead.
        for _ in range(_LOOKUPS):
            found = await self.s.store.transcripts.find_tail(self.hashes)
            if found is None:
                break
            session_id, matched = found
            try:
                self._lease = await self.s.locks.acquire(session_id)
            except errors.StreamInProgress:
                break
            try:
                return await self._write(session_id, messages[matched:], expected=self.hashes[matched - 1])
            except TailMoved:
                await self.release_lease()
        session_id = new_id()
        self._lease = await self.s.locks.acquire(session_id)  # before its rows exist, as a chat.send does
        return await self._write(session_id, messages, create=True)

    async def _begin_named(self, session_id: str, messages: list[dict[str, Any]]) -> TurnRows:
        """The header names the session: continue it after what it already holds of this conversation, or create it
        under that id. Busy, it is refused (429) rather than forked."""
        self._lease = await self.s.locks.acquire(session_id)
        session = await self.s.store.chats.get_session(session_id)
        if session is None:
            return await self._write(session_id, messages, create=True)
        if session.agent_id != self.call.agent_id:
            raise errors.SessionNotFound(f"session {session_id} does not exist", sessionId=session_id)
        if session.tail_hash in self.hashes:
            known = self.hashes.index(session.tail_hash) + 1
        else:
            # Not written by this conversation's last request (a chat.send came between, or it began elsewhere):
            # skip the leading messages it already holds, compared one by one.
            stored = await self.s.store.chats.load_history(session_id)
            known = 0
            for item, message in zip(stored, messages, strict=False):
                if message_hash(item.role, item.content) != message_hash(message["role"], message.get("content")):
                    break
                known += 1
        return await self._write(session_id, messages[known:])

    async def _write(
        self, session_id: str, new: list[dict[str, Any]], *, create: bool = False, expected: str | None = None
    ) -> TurnRows:
        rows = []
        for message in new:
            blocks = stored_blocks(message.get("content"))
            rows.append(NewMessage(str(message["role"]), blocks, text_of(blocks_of(blocks))))
        begin = self.s.store.transcripts.begin(
            session_id=session_id,
            create=create,
            expected_tail=expected,
            agent_id=self.call.agent_id,
            model=self.model,
            new=rows,
            tail=self.hashes[-1],
            key_id=self.call.key.id if self.call.key is not None else None,
        )
        # Shut down mid-write: the write runs to its end, and an empty reply it made is ended, not left streaming.
        return await write_begun(self.s, begin, lambda: "interrupted", "http-begin")

    async def send(self) -> Exchange:
        """The request upstream, as it came. An error status is an exchange too: relayed as the upstream sent it."""
        s, call = self.s, self.call
        self.obs.upstream_request()
        self.sent_at = s.clock.now()
        try:
            response = await s.upstream.forward(
                "POST", "/v1/messages", content=call.raw, headers=call.headers, params=call.params
            )
        except anthropic.APIStatusError as exc:
            self.exchange = Exchange.of_error(exc, self.obs, self.started)
        except Exception as exc:
            self.failure = map_error(exc)
            raise self.failure from exc
        else:
            self.obs.upstream_headers()
            self.exchange = Exchange.of_response(response, self.obs, self.started)
            if self.rows is not None:  # its usage row from the first event on (chat/spend.py)
                held = self._budget.ids if self._budget is not None else ()
                self._live = LiveUsage.following(s, self.rows, self.model, self.exchange, self.sent_at, held)
        return self.exchange

    async def settle(self) -> None:
        """Save the reply, its usage row and the session's new tail (through an outage), then let go; to its end."""
        await to_the_end(self._settle())

    async def _settle(self) -> None:
        rows = self.rows
        if rows is None:
            return
        s, ex = self.s, self.exchange
        failure = self.failure or (ex.failure if ex is not None else None)
        reply = ex.reply if ex is not None else None
        read_to_end = reply is not None and reply.finished
        if self.interrupted:
            status = "interrupted"
        elif failure is not None:
            status = "failed"
        elif self.client_gone and (s.settings.on_disconnect != "finish" or not read_to_end):
            status = "disconnected"
        else:
            status = "complete"
        if self._live is not None:  # its provisional row written, and its output estimated if it was cut short
            await self._live.settled(complete=status == "complete")
        duration_ms = int((time.monotonic() - self.started) * 1000)
        priced = record = None
        if reply is not None and reply.message_id is not None:
            usage, estimated = billed_usage(reply)
            priced = s.prices.price(self.model, usage, self.sent_at, reply.server_tools)
            first_token_ms = ex.first_token_ms if ex is not None else None
            record = usage_record(rows, priced, status, duration_ms, first_token_ms, None, reply.message_id,
                                  self.sent_at, None, reply.server_tools,
                                  usage_id=reply.usage_id, estimated=estimated)  # fmt: skip
        content = reply.content(complete=status == "complete") if reply is not None else []
        delivered = status == "complete" and not self.client_gone and bool(content)
        # What the client sends next: with this reply if it got it, else the same conversation again.
        tail = extend(self.hashes[-1], "assistant", content) if delivered else self.hashes[-1]
        stop_reason = reply.stop_reason if reply is not None and status == "complete" else status
        error_code = failure.code if failure is not None else None

        async def save() -> None:
            await s.store.transcripts.finish(
                message_id=rows.assistant_message.id,
                session_id=rows.session.id,
                content=content,
                text=reply.text if reply is not None else "",
                status=status,
                stop_reason=stop_reason,
                error_code=error_code,
                usage=record,
                tail=tail,
            )

        try:
            if not await asyncio.shield(saved_through_outage(save)):
                # Past a short outage: held until the database is back, the session locked meanwhile (held.py).
                lease, self._lease = self._lease, None
                s.held.hold(rows.assistant_message.id, save, lease)
        finally:
            await self.release()
        cost = priced.cost.total if priced is not None and priced.cost is not None else None
        self.obs.finished(
            session_id=rows.session.id,
            message_id=rows.assistant_message.id,
            agent_id=rows.session.agent_id,
            model=self.model,
            status=status,
            stop_reason=stop_reason,
            usage=priced.usage if priced is not None else None,
            cost_nano=cost,
            duration_ms=duration_ms,
            error_code=error_code,
        )

    async def release_lease(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            await lease.release()

    async def release(self) -> None:
        budget, self._budget = self._budget, None
        if budget is not None:
            await budget.release()
        await self.release_lease()


@contextlib.asynccontextmanager
async def messages_exchange(turn: Passthrough) -> AsyncIterator[Passthrough]:
    """Admit the call (GatewayError: refused), send it, and settle it when the block is left. The block reads
    `turn.exchange` and marks `client_gone` if its client went away (`interrupted`: the gateway stopped it)."""
    await turn.admit()
    try:
        await turn.send()
        yield turn
    except asyncio.CancelledError:
        turn.interrupted = not turn.client_gone  # the gateway is shutting down under the request
        raise
    finally:
        await turn.settle()
