"""A resent chat.send (same idempotencyKey) never starts a second upstream request; it answers `chat.state`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse

from gateway import errors
from gateway.server.handlers import SERVICES
from gateway.store.chats import new_id
from tests.conftest import Gateway, chat, collect, recv, send
from tests.databases import rows
from tests.fake_anthropic import FakeAnthropic, Reply


def message_requests(fake: FakeAnthropic) -> int:
    return len([r for r in fake.requests if r.path == "/v1/messages"])


async def test_resend_after_finishing_answers_the_stored_state(
    gateway: Gateway, ws: ClientWebSocketResponse, fake: FakeAnthropic
) -> None:
    fake.queue(Reply(text="the one answer"))
    first = await chat(ws, "hello", idempotencyKey="key-1")
    end = first[-1]
    assert end["type"] == "chat.stream.end"
    other = await gateway.ws()  # a reconnecting client resends on a fresh socket
    again = await chat(other, "hello", id="t2", idempotencyKey="key-1")
    assert again == [_complete_state("t2", end, again[0]["userMessageId"], "the one answer")]
    assert message_requests(fake) == 1
    await other.close()


async def test_resend_while_running_answers_streaming(gateway: Gateway, fake: FakeAnthropic) -> None:
    fake.queue(Reply(text="slow and steady", hold_after_deltas=1))
    first = await gateway.ws()
    await send(first, {"type": "chat.send", "id": "a", "content": "hello", "idempotencyKey": "key-2"})
    created = await recv(first)
    await fake.wait_held()
    second = await gateway.ws()
    for fields in ({}, {"sessionId": created["sessionId"]}):  # with and without the session it went to
        state = (await chat(second, "hello", id="b", idempotencyKey="key-2", **fields))[-1]
        assert (state["type"], state["status"], state["sessionId"]) == ("chat.state", "streaming", created["sessionId"])
    fake.release()
    assert (await collect(first))[-1]["type"] == "chat.stream.end"
    assert message_requests(fake) == 1
    await first.close()
    await second.close()


@pytest.mark.parametrize("same_session", [False, True])
async def test_simultaneous_resends_start_one_request(
    gateway: Gateway, fake: FakeAnthropic, db_url: str, same_session: bool
) -> None:
    sockets = [await gateway.ws() for _ in range(4)]
    fields = {}
    if same_session:
        fields["sessionId"] = (await chat(sockets[0], "start a session"))[0]["sessionId"]
    before = message_requests(fake)
    frame = {"type": "chat.send", "id": "r", "content": "once only", "idempotencyKey": "key-3", **fields}
    await asyncio.gather(*(send(ws, frame) for ws in sockets))
    outcomes = await asyncio.gather(*(collect(ws) for ws in sockets))
    ends = [o[-1] for o in outcomes]
    assert [e["type"] for e in ends].count("chat.stream.end") == 1
    for e in ends:
        # The losers learn the winner's state, or (same session, original not stored yet) to retry shortly.
        assert e["type"] in ("chat.stream.end", "chat.state") or (same_session and e["code"] == "STREAM_IN_PROGRESS")
    assert message_requests(fake) - before == 1
    assert await rows(db_url, "select count(*) from messages where idempotency_key = 'key-3'") == [(1,)]
    assert await rows(db_url, "select count(*) from sessions") == [(1,)]
    for ws in sockets:
        await ws.close()


async def test_a_resend_that_finds_its_session_locked_by_the_original_answers_its_state(
    gateway: Gateway, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resend looked its key up just before the original stored its user turn, then found the session locked by
    it: by then the original is stored, so the resend answers with its state instead of asking to retry."""
    first, second = await gateway.ws(), await gateway.ws()
    session_id = (await chat(first, "start a session"))[0]["sessionId"]
    chats = gateway.app[SERVICES].store.chats
    find, begin = chats.find_by_idempotency_key, chats.begin_turn
    stored = asyncio.Event()

    async def late_answer(key: str) -> Any:
        found = await find(key)
        task = asyncio.current_task()
        if task is not None and task.get_name() == "turn-resend" and not stored.is_set():
            await stored.wait()  # the original stores its user turn (and holds the lock) meanwhile
        return found

    async def begin_then_tell(**kwargs: Any) -> Any:
        rows = await begin(**kwargs)
        stored.set()
        return rows

    monkeypatch.setattr(chats, "find_by_idempotency_key", late_answer)
    monkeypatch.setattr(chats, "begin_turn", begin_then_tell)
    fake.queue(Reply(text="the original", hold_after_deltas=1))
    frame = {"type": "chat.send", "content": "once only", "sessionId": session_id, "idempotencyKey": "key-5"}
    await send(second, {**frame, "id": "resend"})
    await send(first, {**frame, "id": "original"})
    state = (await collect(second))[-1]
    assert (state["type"], state["status"], state["sessionId"]) == ("chat.state", "streaming", session_id)
    fake.release()
    assert (await collect(first))[-1]["type"] == "chat.stream.end"
    assert message_requests(fake) == 2
    await first.close()
    await second.close()


async def test_losing_the_race_to_the_unique_index_is_a_duplicate(gateway: Gateway, db_url: str) -> None:
    """Two sends that both passed the duplicate check: the database decides, and the loser writes nothing."""
    chats = gateway.app[SERVICES].store.chats
    turn = {"agent_id": "default", "model": "m", "content": "hi", "idempotency_key": "key-4", "create": True}
    await chats.begin_turn(session_id=new_id(), **turn)
    with pytest.raises(errors.DuplicateRequest):
        await chats.begin_turn(session_id=new_id(), **turn)
    assert await rows(db_url, "select count(*) from sessions") == [(1,)]
    assert await rows(db_url, "select count(*) from messages") == [(2,)]


async def test_a_resend_that_loses_the_race_to_the_unique_index_answers_the_originals_state(
    gateway: Gateway, fake: FakeAnthropic, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resend looked its key up before the original was stored, so it goes on to write its own turn; the unique
    index refuses that write, and the resend answers with the original's state: nothing written, nothing sent
    upstream, no error."""
    first, second = await gateway.ws(), await gateway.ws()
    fake.queue(Reply(text="the one answer"))
    end = (await chat(first, "once only", id="original", idempotencyKey="key-6"))[-1]
    chats = gateway.app[SERVICES].store.chats
    find = chats.find_by_idempotency_key
    looked: list[str] = []

    async def too_early(key: str) -> Any:
        task = asyncio.current_task()
        if task is not None and task.get_name() == "turn-resend" and not looked:
            looked.append(key)
            return None  # as it was a moment before the original's commit
        return await find(key)

    monkeypatch.setattr(chats, "find_by_idempotency_key", too_early)
    frames = await chat(second, "once only", id="resend", idempotencyKey="key-6")
    assert looked == ["key-6"]
    assert frames == [_complete_state("resend", end, frames[0]["userMessageId"], "the one answer")]
    assert message_requests(fake) == 1
    assert await rows(db_url, "select count(*) from sessions") == [(1,)]
    assert await rows(db_url, "select count(*) from messages") == [(2,)]
    # The resend held nothing: its connection takes the next send at once.
    assert (await chat(second, "next", id="next", sessionId=end["sessionId"]))[-1]["type"] == "chat.stream.end"
    await first.close()
    await second.close()


def _complete_state(request_id: str, end: dict[str, Any], user_message_id: str, text: str) -> dict[str, Any]:
    """The one frame a resend of a finished send gets: the original's state, its reply whole."""
    return {
        "type": "chat.state",
        "id": request_id,
        "requestId": request_id,
        "duplicate": True,
        "sessionId": end["sessionId"],
        "userMessageId": user_message_id,
        "messageId": end["messageId"],
        "status": "complete",
        "stopReason": "end_turn",
        "text": text,
    }
