"""A cancel may land at any await of a turn's start (issue 14: 11 of 2,000 sends with client churn left a reply
`streaming` when it landed during the shielded write in begin_turn). Each test cancels the turn at one await, before
or after the awaited call, and checks what a user would: exactly one terminal frame, no reply left `streaming`, and
the session free for the next send."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.billing.budgets import BudgetGuard
from gateway.chat import turn as turn_module
from gateway.chat.relay import Relay
from gateway.errors import DatabaseUnavailable
from gateway.server.handlers import CONNECTIONS, SERVICES
from gateway.store.base import Database
from gateway.store.chats import ChatStore
from gateway.store.sqlite_threads import CancelledAfterCommit, Writer
from tests.conftest import TERMINAL, Gateway, chat, collect, send
from tests.sql import sql_rows

Factory = Callable[..., Awaitable[Gateway]]

# Each await of Turn._run/_begin and ChatStore.begin_turn, by the function awaited: a cancel is delivered at its
# start (before) or, where the callee can raise CancelledError after its effect, at its end (after). A unit of work
# does exactly that: SQLite's thread finishes (and commits) and the cancel is raised afterwards, as
# CancelledAfterCommit when it wrote. The others have no await after their effect (the lock, the reservation), so a
# cancel cannot land between effect and return.
POINTS: list[tuple[Any, str, bool, bool]] = [
    # where, name, only_writes, can_end_cancelled
    (ChatStore, "session_with_history", False, True),
    (turn_module, "measure", False, False),
    (ChatStore, "calibration", False, True),
    (BudgetGuard, "reserve", False, False),
    ("locks", "acquire", False, False),  # FileSessionLocks or PgSessionLocks, whichever the database has
    (ChatStore, "begin_turn", False, True),
    (Database, "run", True, True),  # the write inside begin_turn: the reported case
]
CASES = [
    (where, name, only_writes, after, existing)
    for where, name, only_writes, can_end_cancelled in POINTS
    for after in ((False, True) if can_end_cancelled else (False,))
    # A new session has nothing to read.
    for existing in ((True,) if name == "session_with_history" else (False, True))
]


def _label(case: tuple[Any, str, bool, bool, bool]) -> str:
    where, name, _, after, existing = case
    owner = where if isinstance(where, str) else where.__name__
    return f"{owner}.{name}-{'after' if after else 'before'}-{'existing' if existing else 'new'}-session"


def _cancel_at(monkeypatch: pytest.MonkeyPatch, where: Any, name: str, only_writes: bool, after: bool) -> list[int]:
    """Cancel the turn of the send with id "victim" (as chat.cancel or a disconnect does: Task.cancel) when it, or a
    task it started, reaches `where.name`: just before the call, or just after it. Returns a list that holds 1 once
    the cancel was sent."""
    original = getattr(where, name)
    fired: list[int] = []

    async def hooked(*args: Any, **kwargs: Any) -> Any:
        task = asyncio.current_task()
        ours = (
            not fired
            and task is not None
            and task.get_name().startswith("turn-victim")
            and (not only_writes or kwargs.get("write") is True)
        )
        victim = next((t for t in asyncio.all_tasks() if t.get_name() == "turn-victim"), None)
        if ours and victim is not None and not after:
            fired.append(1)
            victim.cancel()
        result = await original(*args, **kwargs)
        if ours and victim is not None and after:
            fired.append(1)
            victim.cancel()
            if task is victim:
                await _cancelled_at_the_end(result, wrote=name == "begin_turn" or kwargs.get("write") is True)
        return result

    monkeypatch.setattr(where, name, hooked)
    return fired


async def _cancelled_at_the_end(result: Any, *, wrote: bool) -> None:
    """Deliver the cancel just sent to this task here, after the call's effect, as the call itself raises it: a
    write awaited in the turn's own task (SQLite's) reports that it committed (CancelledAfterCommit), a read a plain
    cancel."""
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        if wrote:
            raise CancelledAfterCommit(result) from None
        raise


async def _check_after(gateway: Gateway, db_url: str, frames: list[dict[str, Any]], session_id: str | None) -> None:
    terminal = [f for f in frames if f["type"] in TERMINAL]
    assert len(terminal) == 1 and frames[-1] is terminal[0]
    assert await sql_rows(db_url, "SELECT id FROM messages WHERE status = 'streaming'") == []
    session_id = session_id or terminal[0].get("sessionId")
    if session_id is not None:  # the session (if one was made) takes the next send at once
        ws = await gateway.ws()
        assert (await chat(ws, "again", sessionId=session_id, id="next"))[-1]["type"] == "chat.stream.end"
        await ws.close()


async def _ended_reply(db_url: str, terminal: dict[str, Any], status: str = "cancelled") -> bool:
    """If the cancelled send's user turn ("hello") was written: its reply is ended (status, stop reason, no text), its
    session was touched when it was, and the terminal frame names the session. Whether it was written."""
    users = await sql_rows(db_url, "SELECT session_id, seq FROM messages WHERE role = 'user' AND text = 'hello'")
    if not users:
        return False
    [user] = users
    [reply] = await sql_rows(
        db_url,
        "SELECT m.status, m.stop_reason, m.text, m.updated_at = s.updated_at AS touched FROM messages m"
        " JOIN sessions s ON s.id = m.session_id WHERE m.session_id = :s AND m.seq = :q",
        s=user["session_id"],
        q=user["seq"] + 1,
    )
    assert (reply["status"], reply["stop_reason"], reply["text"], bool(reply["touched"])) == (status, status, "", True)
    assert terminal["sessionId"] == user["session_id"]
    return True


@pytest.mark.parametrize(
    ("reason", "status"), [("cancelled", "cancelled"), ("client_gone", "disconnected"), ("shutdown", "interrupted")]
)
async def test_a_turn_stopped_just_after_its_write_keeps_why(
    gateway_factory: Factory, settings: Any, db_url: str, monkeypatch: pytest.MonkeyPatch, reason: str, status: str
) -> None:
    """A disconnect or a shutdown (not only chat.cancel) landing right after the user turn was written: the reply is
    ended with the status that says which."""
    gateway = await gateway_factory(settings)
    ws = await gateway.ws()
    original = Database.run

    async def hooked(self: Database, *args: Any, **kwargs: Any) -> Any:
        result = await original(self, *args, **kwargs)
        task = asyncio.current_task()
        victim = next((c for c in gateway.app[CONNECTIONS] if c.turn_task is not None and not c.turn_task.done()), None)
        if kwargs.get("write") is True and task is not None and task.get_name().startswith("turn-victim") and victim:
            assert victim.turn is not None and victim.turn_task is not None
            victim.turn.cancel_reason = reason  # as Connection.stop_turn does, before it cancels
            victim.turn_task.cancel()
            if task is victim.turn_task:
                await _cancelled_at_the_end(result, wrote=True)
        return result

    monkeypatch.setattr(Database, "run", hooked)
    await send(ws, {"type": "chat.send", "id": "victim", "content": "hello"})
    frames = await collect(ws)
    monkeypatch.undo()
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "CANCELLED"
    assert await _ended_reply(db_url, frames[-1], status)


@pytest.mark.parametrize(("where", "name", "only_writes", "after", "existing"), CASES, ids=[_label(c) for c in CASES])
async def test_a_cancel_at_any_await_of_a_turns_start_leaves_nothing_streaming(
    gateway_factory: Factory,
    settings: Any,
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    where: Any,
    name: str,
    only_writes: bool,
    after: bool,
    existing: bool,
) -> None:
    gateway = await gateway_factory(settings)
    ws = await gateway.ws()
    session_id = None
    if existing:
        session_id = (await chat(ws, "first"))[-1]["sessionId"]
        if name == "session_with_history":  # the snapshot would skip the read: make this process forget the session
            gateway.app[SERVICES].store.chats._snapshots.drop(session_id)
    if where == "locks":
        where = type(gateway.app[SERVICES].locks)
    fired = _cancel_at(monkeypatch, where, name, only_writes, after)
    fields = {"sessionId": session_id} if session_id else {}
    await send(ws, {"type": "chat.send", "id": "victim", "content": "hello", **fields})
    frames = await collect(ws)
    monkeypatch.undo()
    assert fired, f"{name} was never awaited"
    assert frames[-1]["type"] == "error" and frames[-1]["code"] == "CANCELLED"
    # Where the user turn was written (always, when the cancel lands after the write), its reply is ended cancelled.
    written = await _ended_reply(db_url, frames[-1])
    assert written or not (after and name in ("begin_turn", "run"))
    await _check_after(gateway, db_url, frames, session_id)
    replies = await sql_rows(db_url, "SELECT status FROM messages WHERE role = 'assistant' ORDER BY created_at")
    assert all(r["status"] in ("complete", "cancelled") for r in replies)


@pytest.mark.parametrize("existing", [False, True], ids=["new-session", "existing-session"])
@pytest.mark.parametrize("write", ["fails", "succeeds"])
async def test_a_turn_stopped_twice_while_its_user_turn_is_written_ends_once_as_cancelled(
    gateway_factory: Factory, settings: Any, db_url: str, monkeypatch: pytest.MonkeyPatch, existing: bool, write: str
) -> None:
    """chat.cancel, then the client leaving or a shutdown, both while the user turn is being written; the write then
    fails or succeeds. Either way the client gets one CANCELLED frame (not the write's error, not an internal error),
    no reply stays `streaming`, and the session takes the next send."""
    gateway = await gateway_factory(settings)
    ws = await gateway.ws()
    session_id = (await chat(ws, "first"))[-1]["sessionId"] if existing else None
    original = ChatStore.begin_turn

    async def hooked(self: ChatStore, **kwargs: Any) -> Any:
        victim = next(t for t in asyncio.all_tasks() if t.get_name() == "turn-victim")
        if asyncio.current_task() is not victim:
            # PostgreSQL: the write runs in a task of its own, shielded, while the turn waits for it.
            for _ in range(2):
                victim.cancel()
                for _ in range(3):
                    await asyncio.sleep(0)
            if write == "fails":
                raise DatabaseUnavailable("database unavailable: test")
            return await original(self, **kwargs)
        # SQLite: the turn awaits the writer thread itself; both stops land while the transaction is held open.
        _hold_the_next_write(monkeypatch, victim, fail=write == "fails")
        return await original(self, **kwargs)

    monkeypatch.setattr(ChatStore, "begin_turn", hooked)
    fields = {"sessionId": session_id} if session_id else {}
    await send(ws, {"type": "chat.send", "id": "victim", "content": "hello", **fields})
    frames = await collect(ws)
    monkeypatch.undo()
    assert (frames[-1]["type"], frames[-1]["code"]) == ("error", "CANCELLED")
    assert await _ended_reply(db_url, frames[-1]) is (write == "succeeds")
    await _check_after(gateway, db_url, frames, session_id)


def _hold_the_next_write(monkeypatch: pytest.MonkeyPatch, victim: asyncio.Task[Any], *, fail: bool) -> None:
    """The next write SQLite's writer thread takes waits, inside its transaction, until `victim` was cancelled twice
    (the second while it waits for the transaction to end); then it commits, or fails (`fail`)."""
    gate = threading.Event()
    loop = asyncio.get_running_loop()
    submit = Writer.submit

    def held(writer: Writer, work: Callable[[Any], Any], *, background: bool) -> Any:
        monkeypatch.setattr(Writer, "submit", submit)  # this write only

        def gated(connection: Any) -> Any:
            gate.wait(10)
            if fail:
                raise DatabaseUnavailable("database unavailable: test")
            return work(connection)

        def stop_twice() -> None:
            victim.cancel()
            loop.call_soon(lambda: (victim.cancel(), gate.set()))

        loop.call_soon(stop_twice)
        return submit(writer, gated, background=background)

    monkeypatch.setattr(Writer, "submit", held)


@pytest.mark.parametrize(("reason", "status"), [("shutdown", "interrupted"), ("cancelled", "cancelled")])
async def test_a_stop_landing_when_the_reply_has_just_finished_streaming_keeps_the_whole_reply(
    gateway_factory: Factory, settings: Any, db_url: str, monkeypatch: pytest.MonkeyPatch, reason: str, status: str
) -> None:
    """Seen with `serve --workers 2`: a SIGTERM landing after the upstream's last event but before the reply was
    settled ended the turn with `error CANCELLED`, as if nothing had been saved. The reply was whole and paid for: the
    client gets chat.stream.end saying why the turn stopped, and SQL holds the whole text and its final usage."""
    gateway = await gateway_factory(settings)
    ws = await gateway.ws()
    original = Relay.usage_ended
    fired: list[int] = []

    def hooked(self: Relay) -> None:
        victim = next((c for c in gateway.app[CONNECTIONS] if c.turn_task is not None and not c.turn_task.done()), None)
        if not fired and victim is not None and victim.turn is not None and victim.turn_task is not None:
            fired.append(1)
            victim.turn.cancel_reason = reason  # as Connection.stop_turn does, before it cancels
            victim.turn_task.cancel()
        original(self)

    monkeypatch.setattr(Relay, "usage_ended", hooked)
    await send(ws, {"type": "chat.send", "id": "victim", "content": "hello"})
    frames = await collect(ws)
    monkeypatch.undo()
    assert fired
    streamed = "".join(f["delta"] for f in frames if f["type"] == "chat.stream.delta")
    assert streamed
    terminal = [f for f in frames if f["type"] in TERMINAL]
    assert len(terminal) == 1 and terminal[0]["type"] == "chat.stream.end", terminal
    assert terminal[0]["status"] == status
    assert terminal[0]["usage"]["outputTokens"] > 1
    [reply] = await sql_rows(db_url, "SELECT status, text FROM messages WHERE role = 'assistant'")
    assert (reply["status"], reply["text"]) == (status, streamed)
    [usage] = await sql_rows(db_url, "SELECT status, estimated_output_tokens FROM usage_records")
    assert usage["estimated_output_tokens"] in (None, 0)  # Anthropic's own count arrived: nothing estimated
    await _check_after(gateway, db_url, frames, terminal[0]["sessionId"])


async def test_a_stop_landing_while_a_finished_reply_is_saved_does_not_lose_the_save(
    gateway_factory: Factory, settings: Any, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shutdown or chat.cancel landing while the finished reply and its usage are being written: the write is not
    cut short (on SQLite the writer thread's transaction runs to its end; on PostgreSQL, where a cancel would roll it
    back, the save runs shielded). The client gets one terminal frame; SQL holds the whole reply, billed once."""
    gateway = await gateway_factory(settings)
    ws = await gateway.ws()
    original = ChatStore.finish_turn
    saved = asyncio.Event()

    async def hooked(self: ChatStore, **kwargs: Any) -> Any:
        victim = next((t for t in asyncio.all_tasks() if t.get_name() == "turn-victim"), None)
        if victim is not None and not saved.is_set():
            # Lands at the next pass of the loop, while this write is in flight.
            asyncio.get_running_loop().call_soon(victim.cancel)
        try:
            return await original(self, **kwargs)
        finally:
            saved.set()

    monkeypatch.setattr(ChatStore, "finish_turn", hooked)
    await send(ws, {"type": "chat.send", "id": "victim", "content": "hello"})
    frames = await collect(ws)
    async with asyncio.timeout(10):
        await saved.wait()
    monkeypatch.undo()
    terminal = [f for f in frames if f["type"] in TERMINAL]
    assert len(terminal) == 1
    streamed = "".join(f["delta"] for f in frames if f["type"] == "chat.stream.delta")
    [reply] = await sql_rows(db_url, "SELECT status, text FROM messages WHERE role = 'assistant'")
    assert (reply["status"], reply["text"]) == ("complete", streamed)
    [usage] = await sql_rows(db_url, "SELECT status, output_tokens FROM usage_records")
    assert usage["status"] == "complete" and usage["output_tokens"] > 0
    await _check_after(gateway, db_url, frames, terminal[0].get("sessionId"))
