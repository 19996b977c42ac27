"""A send into a session this process last wrote skips reading it back, and still sends exactly what a fresh read
would: the snapshot is checked against the session's message count in the transaction that writes the user turn."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse

from gateway.server.handlers import SERVICES
from gateway.settings import Settings
from gateway.store.chats import ChatStore
from tests.conftest import Gateway, chat, recv, send
from tests.databases import rows
from tests.fake_anthropic import FakeAnthropic, Reply, tool_reply, tool_use
from tests.test_tool_loop import make_agent

Factory = Callable[[Settings], Awaitable[Gateway]]


def _count_reads(monkeypatch: pytest.MonkeyPatch, store: ChatStore) -> list[str]:
    reads: list[str] = []
    original = store.session_with_history

    async def counted(session_id: str) -> Any:
        reads.append(session_id)
        return await original(session_id)

    monkeypatch.setattr(store, "session_with_history", counted)
    return reads


def _sent_messages(fake: FakeAnthropic) -> list[dict[str, Any]]:
    """The conversation the last request carried, without the prompt-cache markers (they move as it grows)."""
    messages = fake.requests[-1].body["messages"]
    return [
        {"role": m["role"], "content": [{k: v for k, v in b.items() if k != "cache_control"} for b in m["content"]]}
        for m in messages
    ]


def _text(message: dict[str, Any]) -> str:
    return "".join(b["text"] for b in message["content"] if b["type"] == "text")


async def test_a_continued_session_is_not_read_back_and_its_request_is_complete(
    gateway: Gateway, ws: ClientWebSocketResponse, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = _count_reads(monkeypatch, gateway.app[SERVICES].store.chats)
    fake.queue(Reply(text="first answer"))
    session_id = (await chat(ws, "first question"))[0]["sessionId"]
    fake.queue(Reply(text="second answer"))
    assert (await chat(ws, "second question", sessionId=session_id))[-1]["type"] == "chat.stream.end"
    assert reads == []  # the turn that wrote the session remembered it
    assert [(m["role"], _text(m)) for m in _sent_messages(fake)] == [
        ("user", "first question"),
        ("assistant", "first answer"),
        ("user", "second question"),
    ]


async def test_a_session_another_process_wrote_to_is_read_afresh_and_written_once(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic, db_url: str
) -> None:
    """Clients behind a load balancer: turns 1 and 3 through one process, turn 2 through another."""
    here, there = await gateway_factory(settings), await gateway_factory(settings)
    ws_here, ws_there = await here.ws(), await there.ws()
    fake.queue(Reply(text="one"))
    session_id = (await chat(ws_here, "q1"))[0]["sessionId"]
    fake.queue(Reply(text="two"))
    await chat(ws_there, "q2", sessionId=session_id)
    fake.queue(Reply(text="three"))
    frames = await chat(ws_here, "q3", sessionId=session_id)
    assert frames[-1]["type"] == "chat.stream.end"
    assert [_text(m) for m in _sent_messages(fake)] == ["q1", "one", "q2", "two", "q3"]
    stored = await rows(db_url, f"SELECT seq, role, text FROM messages WHERE session_id = '{session_id}' ORDER BY seq")
    assert [tuple(r) for r in stored] == [
        (0, "user", "q1"),
        (1, "assistant", "one"),
        (2, "user", "q2"),
        (3, "assistant", "two"),
        (4, "user", "q3"),
        (5, "assistant", "three"),
    ]
    count = await rows(db_url, f"SELECT message_count FROM sessions WHERE id = '{session_id}'")
    assert count[0][0] == 6
    await ws_here.close()
    await ws_there.close()


async def test_a_send_retried_after_a_stale_snapshot_keeps_its_idempotency_key(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic, db_url: str
) -> None:
    """Turn 3 goes through a process whose snapshot another process made stale, so its user turn is written on the
    second try: with its key all the same, so the client's resend is answered from it and never paid for twice."""
    here, there = await gateway_factory(settings), await gateway_factory(settings)
    ws_here, ws_there = await here.ws(), await there.ws()
    session_id = (await chat(ws_here, "q1"))[0]["sessionId"]
    await chat(ws_there, "q2", sessionId=session_id)
    fake.queue(Reply(text="three"))
    end = (await chat(ws_here, "q3", sessionId=session_id, idempotencyKey="k-3"))[-1]
    assert end["type"] == "chat.stream.end"
    requests = len(fake.requests)
    again = await chat(ws_there, "q3", id="t2", sessionId=session_id, idempotencyKey="k-3")
    assert [(f["type"], f["status"], f["messageId"], f["text"]) for f in again] == [
        ("chat.state", "complete", end["messageId"], "three")
    ]
    assert len(fake.requests) == requests
    keyed = await rows(db_url, "SELECT text FROM messages WHERE idempotency_key = 'k-3'")
    assert [tuple(r) for r in keyed] == [("q3",)]
    await ws_here.close()
    await ws_there.close()


async def test_after_a_cancelled_reply_a_snapshot_sends_what_a_fresh_read_sends(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    here = await gateway_factory(settings)
    ws = await here.ws()
    fake.queue(Reply(text="a complete answer"))
    session_id = (await chat(ws, "first"))[0]["sessionId"]
    fake.queue(Reply(text="one two three four five", hold_after_deltas=2))
    await send(ws, {"type": "chat.send", "id": "held", "content": "second", "sessionId": session_id})
    await fake.wait_held()
    await send(ws, {"type": "chat.cancel", "id": "c", "sessionId": session_id})
    while (await recv(ws))["type"] != "chat.cancelled":
        pass
    fake.queue(Reply(text="from the snapshot"))
    await chat(ws, "third", sessionId=session_id)
    from_snapshot = _sent_messages(fake)
    # A process that never saw the session reads it from the database: the same conversation must go upstream.
    elsewhere = await gateway_factory(settings)
    ws_elsewhere = await elsewhere.ws()
    fake.queue(Reply(text="from a read"))
    await chat(ws_elsewhere, "fourth", sessionId=session_id)
    from_read = _sent_messages(fake)
    assert from_read[: len(from_snapshot)] == from_snapshot
    assert [m["role"] for m in from_read] == ["user", "assistant", "user", "assistant", "user", "assistant", "user"]
    await ws.close()
    await ws_elsewhere.close()


async def test_a_deleted_session_is_not_continued_from_memory(
    gateway: Gateway, ws: ClientWebSocketResponse, fake: FakeAnthropic
) -> None:
    fake.queue(Reply(text="hello"))
    session_id = (await chat(ws, "hi"))[0]["sessionId"]
    await send(ws, {"type": "session.delete", "id": "d", "sessionId": session_id})
    assert (await recv(ws))["type"] == "session.deleted"
    frames = await chat(ws, "still there?", sessionId=session_id)
    assert (frames[-1]["type"], frames[-1]["code"]) == ("error", "SESSION_NOT_FOUND")


async def test_a_turn_that_ran_tools_leaves_nothing_of_itself_in_memory(
    gateway: Gateway,
    ws: ClientWebSocketResponse,
    fake: FakeAnthropic,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A turn's history is remembered from its write until its reply is saved; a turn that ran tools saved more than
    that reply, so it is forgotten, and the next send reads the session afresh. Nothing of it stays behind: a
    long-running gateway would otherwise hold every such turn's history for as long as it runs."""
    make_agent(settings)
    chats = gateway.app[SERVICES].store.chats
    fake.queue(tool_reply(tool_use("read_skill", {"name": "pdf"})), Reply(text="Use pdftotext."))
    session_id = (await chat(ws, "How do I read a PDF?", agentId="helper"))[0]["sessionId"]
    assert chats._snapshots._pending == {} and chats.snapshot(session_id) is None
    reads = _count_reads(monkeypatch, chats)
    assert (await chat(ws, "Thanks.", sessionId=session_id))[-1]["type"] == "chat.stream.end"
    assert reads == [session_id]
    assert chats._snapshots._pending == {}


def test_snapshots_are_bounded_by_the_text_they_hold() -> None:
    """Memory stays bounded however long sessions grow: oldest sessions go first, an oversized one is not kept."""
    from gateway.store.history import HistoryItem
    from gateway.store.models import ChatSession
    from gateway.store.snapshots import Snapshots

    def item(message_id: str, text: str) -> HistoryItem:
        return HistoryItem(message_id, "user", [{"type": "text", "text": text}], "v")

    def remember(snapshots: Snapshots, session_id: str, text: str) -> None:
        session = ChatSession(id=session_id, agent_id="default", title="t", model="m", message_count=2)
        snapshots.begun(f"r-{session_id}", session, [], item(f"u-{session_id}", text))
        snapshots.finished(item(f"r-{session_id}", text))

    snapshots = Snapshots(max_chars=2_000)  # each session below holds ~730 characters
    remember(snapshots, "a", "x" * 300)
    remember(snapshots, "b", "x" * 300)
    assert snapshots.get("a") is not None and snapshots.get("b") is not None
    remember(snapshots, "c", "x" * 300)  # a, used least recently, makes room
    assert snapshots.get("a") is None and snapshots.get("b") is not None and snapshots.get("c") is not None
    remember(snapshots, "huge", "x" * 2_000)
    assert snapshots.get("huge") is None
    assert len(snapshots.get("c").history) == 2  # type: ignore[union-attr]
