"""Stopping a stream: chat.cancel, and the client going away mid-stream (cancel or finish)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import ClientWebSocketResponse

from gateway.server.connection import Connection
from gateway.server.handlers import CONNECTIONS
from gateway.settings import Settings
from tests.conftest import TERMINAL, Gateway, chat, collect, deltas, recv, request, send
from tests.databases import rows
from tests.fake_anthropic import FakeAnthropic, Reply
from tests.raw_ws import text_frame, texts, upgrade

Factory = Callable[[Settings], Awaitable[Gateway]]
TEXT = "one two three four five six seven eight"


async def _start_held(ws: ClientWebSocketResponse, fake: FakeAnthropic, after: int = 3) -> list[dict[str, Any]]:
    """Send a chat whose upstream holds after `after` text deltas; return the frames received up to the hold."""
    fake.queue(Reply(text=TEXT, hold_after_deltas=after))
    await send(ws, {"type": "chat.send", "id": "s1", "content": "talk to me"})
    await fake.wait_held()
    frames: list[dict[str, Any]] = []
    while len([f for f in frames if f["type"] == "chat.stream.delta"]) < after:
        frames.append(await recv(ws))
    return frames


async def _one(db_url: str, sql: str) -> tuple[Any, ...]:
    [row] = await rows(db_url, sql)
    return row


async def test_cancel_stops_upstream_and_keeps_the_partial_reply(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, db_url: str
) -> None:
    frames = await _start_held(ws, fake)
    session_id = frames[0]["sessionId"]
    await send(ws, {"type": "chat.cancel", "id": "c1", "sessionId": session_id})
    end = await recv(ws)
    assert end["type"] == "chat.stream.end" and end["id"] == "s1"
    assert end["stopReason"] == "cancelled" and end["status"] == "cancelled"
    assert end["usage"]["inputTokens"] > 0  # the usage so far is reported...
    assert await recv(ws) == {"type": "chat.cancelled", "id": "c1", "requestId": "c1", "sessionId": session_id}
    # ...and the upstream request was closed by us, not finished.
    assert await fake.wait_stream_closed() is True
    history = await request(ws, {"type": "session.history", "sessionId": session_id})
    reply = history["messages"][1]
    assert reply["status"] == "cancelled" and reply["stopReason"] == "cancelled"
    assert reply["text"] == "one two three " == deltas(frames)
    row = await _one(db_url, "select status, input_tokens from usage_records")
    assert row[0] == "cancelled" and row[1] > 0
    # Exactly one terminal frame: the next answer is for the next request.
    assert (await request(ws, {"type": "ping", "id": "p"}))["type"] == "pong"
    # The session is free again.
    assert (await chat(ws, "again", sessionId=session_id))[-1]["type"] == "chat.stream.end"


async def test_cancel_with_send_id_must_match(ws: ClientWebSocketResponse, fake: FakeAnthropic) -> None:
    frames = await _start_held(ws, fake)
    session_id = frames[0]["sessionId"]
    wrong = await request(ws, {"type": "chat.cancel", "id": "c0", "sessionId": session_id, "sendId": "other"})
    assert wrong["code"] == "NOTHING_TO_CANCEL" and wrong["retryable"] is False
    await send(ws, {"type": "chat.cancel", "id": "c1", "sessionId": session_id, "sendId": "s1"})
    assert (await recv(ws))["stopReason"] == "cancelled"
    assert (await recv(ws))["type"] == "chat.cancelled"


async def test_a_new_sessions_first_reply_is_known_by_its_session_while_it_streams(
    ws: ClientWebSocketResponse, fake: FakeAnthropic
) -> None:
    """The send made the session: while its reply streams, a cancel naming another session stops nothing, and a second
    send is refused naming the session that is streaming."""
    frames = await _start_held(ws, fake)
    session_id = frames[0]["sessionId"]
    wrong = await request(ws, {"type": "chat.cancel", "id": "c0", "sessionId": "another-session"})
    assert (wrong["code"], wrong["sessionId"]) == ("NOTHING_TO_CANCEL", "another-session")
    busy = await request(ws, {"type": "chat.send", "id": "s2", "content": "and another thing"})
    assert (busy["code"], busy["sessionId"]) == ("STREAM_IN_PROGRESS", session_id)
    fake.release()
    rest = await collect(ws)
    end = rest[-1]
    assert (end["type"], end["id"], end["status"], end["sessionId"]) == (
        "chat.stream.end",
        "s1",
        "complete",
        session_id,
    )
    assert deltas(frames + rest) == TEXT


async def test_cancel_with_nothing_running_is_a_clean_error(ws: ClientWebSocketResponse) -> None:
    answer = await request(ws, {"type": "chat.cancel", "id": "c", "sessionId": "no-such-session"})
    assert answer == {
        "type": "error",
        "id": "c",
        "requestId": "c",
        "code": "NOTHING_TO_CANCEL",
        "message": answer["message"],
        "retryable": False,
        "sessionId": "no-such-session",
    }
    session_id = (await chat(ws, "done already"))[0]["sessionId"]
    assert (await request(ws, {"type": "chat.cancel", "sessionId": session_id}))["code"] == "NOTHING_TO_CANCEL"


def _connection_of(gateway: Gateway) -> Connection:
    (connection,) = [c for c in gateway.app[CONNECTIONS] if not c.gone]
    return connection


async def test_client_gone_cancels_upstream_saves_partial_and_frees_the_session(
    gateway: Gateway, fake: FakeAnthropic, db_url: str
) -> None:
    ws = await gateway.ws()
    frames = await _start_held(ws, fake)
    session_id = frames[0]["sessionId"]
    turn = _connection_of(gateway).turn_task
    assert turn is not None
    await ws.close()
    assert await fake.wait_stream_closed() is True
    await asyncio.wait_for(asyncio.shield(turn), 5)  # the turn is over: reply saved, session lease released
    assert await _one(db_url, "select status, stop_reason, text from messages where role = 'assistant'") == (
        "disconnected",
        "disconnected",
        "one two three ",
    )
    assert await _one(db_url, "select status from usage_records") == ("disconnected",)
    other = await gateway.ws()
    assert (await chat(other, "still there?", sessionId=session_id))[-1]["type"] == "chat.stream.end"
    await other.close()


async def test_client_gone_with_finish_lets_the_reply_complete(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic, db_url: str
) -> None:
    gateway = await gateway_factory(settings.with_overrides(on_disconnect="finish"))
    ws = await gateway.ws()
    await _start_held(ws, fake)
    turn = _connection_of(gateway).turn_task
    assert turn is not None
    await ws.close()
    fake.release()
    assert await fake.wait_stream_closed() is False  # upstream ran to its end
    await asyncio.wait_for(asyncio.shield(turn), 5)
    row = await _one(db_url, "select status, text from messages where role = 'assistant'")
    assert row == ("complete", TEXT)
    assert await _one(db_url, "select status from usage_records") == ("complete",)


async def test_cancel_before_the_first_token(ws: ClientWebSocketResponse, fake: FakeAnthropic) -> None:
    fake.queue(Reply(text=TEXT, hold_after_deltas=0))
    await send(ws, {"type": "chat.send", "id": "s1", "content": "hi"})
    created = await recv(ws)
    await fake.wait_held()
    await send(ws, {"type": "chat.cancel", "id": "c", "sessionId": created["sessionId"]})
    frames = await collect(ws)
    assert frames[-1]["type"] == "chat.stream.end" and frames[-1]["status"] == "cancelled"
    assert deltas(frames) == ""
    assert (await recv(ws))["type"] == "chat.cancelled"
    assert await fake.wait_stream_closed() is True


async def test_a_cancel_read_together_with_its_send_still_ends_the_send_with_its_terminal_frame(
    gateway: Gateway, db_url: str
) -> None:
    """chat.send and chat.cancel in one TCP segment, so the gateway reads both before the send's turn has run a line:
    a turn cancelled before its first step would end without its terminal frame (seen by hand: the client waited
    forever, and the session stayed busy for this connection). The send gets exactly one terminal frame."""
    first = await gateway.ws()
    session_id = (await chat(first, "first"))[-1]["sessionId"]
    await first.close()
    server = gateway.client.server
    status, raw = await upgrade(str(server.host), int(server.port or 0))
    assert status == 101
    both = [
        {"type": "chat.send", "id": "s1", "content": "again", "sessionId": session_id},
        {"type": "chat.cancel", "id": "c1", "sessionId": session_id},
    ]
    assert await raw.send(b"".join(text_frame(json.dumps(frame)) for frame in both))

    def answered(frames: list[tuple[int, bytes]]) -> bool:
        ids = {(f["id"], f["type"]) for f in texts(frames)}
        return ("c1", "chat.cancelled") in ids and any(i == "s1" and t in TERMINAL for i, t in ids)

    got = texts(await raw.frames_until(answered, within_s=10))
    raw.close()
    terminal = [f for f in got if f["id"] == "s1" and f["type"] in TERMINAL]
    assert [(f["type"], f.get("code")) for f in terminal] == [("error", "CANCELLED")]
    assert ("chat.cancelled", session_id) in {(f["type"], f.get("sessionId")) for f in got if f["id"] == "c1"}
    assert await rows(db_url, "SELECT status FROM messages WHERE status = 'streaming'") == []
