"""Limits on what one client may do: frame size, content length, page size, frame rate, dead peers, slow readers."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType

from gateway.server.connection import Connection
from gateway.server.handlers import CONNECTIONS, read_limit
from gateway.settings import Settings
from tests.conftest import Gateway, chat, collect, deltas, recv, request, send
from tests.fake_anthropic import FakeAnthropic, Reply

Factory = Callable[[Settings], Awaitable[Gateway]]
BUFFER = 256 * 1024


async def _eventually(predicate: Callable[[], bool]) -> None:
    """For states with no event to wait on (a kernel buffer filling up): check until true, or fail."""
    async with asyncio.timeout(10):
        while not predicate():  # noqa: ASYNC110 - the kernel offers no event for a full socket buffer
            await asyncio.sleep(0.01)


async def test_content_over_the_limit_is_an_error_frame_not_a_close(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    ws = await (await gateway_factory(settings.with_overrides(max_content_chars=100))).ws()
    answer = await request(ws, {"type": "chat.send", "id": "big", "content": "x" * 101})
    assert (answer["code"], answer["field"], answer["id"], answer["retryable"]) == (
        "MESSAGE_TOO_LARGE",
        "content",
        "big",
        False,
    )
    assert fake.requests == []
    assert (await chat(ws, "y" * 100))[-1]["type"] == "chat.stream.end"  # exactly at the limit is fine


async def test_frame_over_the_limit_gets_an_error_frame(gateway_factory: Factory, settings: Settings) -> None:
    limit = 64 * 1024
    ws = await (await gateway_factory(settings.with_overrides(max_frame_bytes=limit))).ws()
    padded = json.dumps({"type": "ping", "id": 1, "pad": "é" * (limit // 2)}, ensure_ascii=False)
    assert len(padded) < limit < len(padded.encode())  # 2 bytes per é: within the limit in characters, not bytes
    await ws.send_str(padded)
    answer = await recv(ws)
    assert (answer["type"], answer["code"]) == ("error", "MESSAGE_TOO_LARGE")
    await ws.send_bytes(b"\0" * (limit + 1))
    assert (await recv(ws))["code"] == "MESSAGE_TOO_LARGE"
    assert await request(ws, {"type": "ping", "id": 2}) == {"type": "pong", "id": 2, "requestId": 2}


async def test_frame_far_over_the_limit_is_closed_with_1009(gateway_factory: Factory, settings: Settings) -> None:
    limit = 64 * 1024
    ws = await (await gateway_factory(settings.with_overrides(max_frame_bytes=limit))).ws()
    await ws.send_str(" " * (read_limit(limit) + 1))
    msg = await ws.receive(timeout=5)
    assert msg.type == WSMsgType.CLOSE and ws.close_code == WSCloseCode.MESSAGE_TOO_BIG


async def test_session_pages_are_capped(gateway_factory: Factory, settings: Settings) -> None:
    ws = await (await gateway_factory(settings.with_overrides(max_sessions_per_page=2))).ws()
    for n in range(3):
        await chat(ws, f"session {n}")
    page = await request(ws, {"type": "session.list", "limit": 1000})
    assert page["limit"] == 2 and len(page["sessions"]) == 2 and page["nextCursor"]
    rest = await request(ws, {"type": "session.list", "limit": 1000, "cursor": page["nextCursor"]})
    assert len(rest["sessions"]) == 1 and rest["nextCursor"] is None


async def test_frame_flood_is_rate_limited_and_the_connection_lives(
    gateway_factory: Factory, settings: Settings
) -> None:
    ws = await (await gateway_factory(settings.with_overrides(frames_per_second=5, frame_burst=5))).ws()
    for n in range(30):
        await send(ws, {"type": "ping", "id": n})
    answers = [await recv(ws) for _ in range(30)]  # every frame gets exactly one answer
    limited = [a for a in answers if a["type"] == "error"]
    assert len(limited) >= 20
    assert all(a["code"] == "RATE_LIMITED" and a["retryable"] is True for a in limited)
    # A refused frame's answer still names it, so a client waiting on that id gets its error at once.
    assert sorted(a["id"] for a in answers) == list(range(30))
    assert [a["id"] for a in answers if a["type"] == "pong"][:5] == [0, 1, 2, 3, 4]  # the burst passes
    assert not ws.closed


def _connection(gateway: Gateway) -> Connection:
    (connection,) = [c for c in gateway.app[CONNECTIONS] if not c.gone]
    return connection


async def test_heartbeat_closes_a_dead_connection_and_cancels_its_stream(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    # The unanswered ping closes the connection about 1.5 heartbeats after the send: the turn must reach the upstream's
    # hold before that, also on a loaded machine.
    gateway = await gateway_factory(settings.with_overrides(heartbeat_s=0.5))
    ws = await gateway.ws(autoping=False)  # a peer that never answers pings: as good as dead
    fake.queue(Reply(text="a b c d", hold_after_deltas=1))
    await send(ws, {"type": "chat.send", "id": "s", "content": "hi"})
    await fake.wait_held()
    task = _connection(gateway).turn_task
    assert task is not None
    assert await fake.wait_stream_closed() is True  # the gateway gave up on the peer and on its stream
    await asyncio.wait_for(asyncio.shield(task), 5)
    history = [m async for m in _drain(ws)]
    assert any(m.type == WSMsgType.PING for m in history)
    assert history[-1].type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)


async def _drain(ws: Any) -> Any:
    while True:
        msg = await ws.receive(timeout=5)
        yield msg
        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR):
            return


async def test_slow_reader_slows_only_its_own_stream(gateway: Gateway, fake: FakeAnthropic) -> None:
    word = "w" * 8000
    big = " ".join(f"{n}{word}" for n in range(400))  # 3.2 MB, several times what the socket buffers below hold
    slow = await gateway.ws()
    # Fixed socket buffers on both ends (no autotuning to tens of MB), so the kernel cannot soak up the whole reply.
    transport = _connection(gateway).ws._writer.transport  # type: ignore[union-attr]
    transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER)
    slow.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER)
    fake.queue(Reply(text=big, thinking=None))
    await send(slow, {"type": "chat.send", "id": "slow", "content": "everything, please"})
    await fake.wait_for_request()
    await _eventually(lambda: transport.get_write_buffer_size() > 0)  # its socket is full: the turn waits on it

    fast = await gateway.ws()
    fake.queue(Reply(text="quick answer"))
    frames = await chat(fast, "are you there?", id="fast")
    assert frames[-1]["type"] == "chat.stream.end" and deltas(frames) == "quick answer"

    turn = next(c for c in gateway.app[CONNECTIONS] if c.turn and c.turn.rid == "slow").turn_task
    assert turn is not None and not turn.done()  # still waiting for its reader...
    assert transport.get_write_buffer_size() < 1024 * 1024  # ...with a bounded buffer, not the whole reply
    slow_frames = await collect(slow)
    assert slow_frames[-1]["type"] == "chat.stream.end"
    assert deltas(slow_frames) == big  # nothing lost or reordered
    await slow.close()
    await fast.close()


async def test_rate_limit_can_be_turned_off(gateway_factory: Factory, settings: Settings) -> None:
    ws = await (await gateway_factory(settings.with_overrides(frames_per_second=0, frame_burst=1))).ws()
    for n in range(20):
        await send(ws, {"type": "ping", "id": n})
    assert [(await recv(ws))["type"] for _ in range(20)] == ["pong"] * 20
