"""The edge under attack (issue 14): what an unauthenticated socket may send, caps on connections and unread data,
slow handshakes and frames, the loopback Host rule on every endpoint, and pacing that limits floods but never a
client that waits for its answers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType

from gateway.server.handlers import BUFFERS, CAPS
from gateway.settings import Settings
from tests.conftest import Gateway, collect, make_settings, recv, request, send
from tests.fake_anthropic import FakeAnthropic, Reply
from tests.raw_ws import close_code, header, text_frame, upgrade

Factory = Callable[[Settings], Awaitable[Gateway]]
TOKEN = "edge-test-token-0123456789-abcdefghijklmnop"


@pytest.fixture
def settings(tmp_path: Path, fake: FakeAnthropic) -> Settings:
    """The edge is the same on either database: these run on SQLite only."""
    return make_settings(tmp_path / "home", fake, f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")


async def _eventually(predicate: Callable[[], bool]) -> None:
    """For server-side state with no event to wait on (a handler's finally block); bounded."""
    async with asyncio.timeout(20):
        while not predicate():  # noqa: ASYNC110 - the server's bookkeeping offers no event
            await asyncio.sleep(0.01)


def _port(gateway: Gateway) -> int:
    port = gateway.client.port
    assert port is not None
    return port


async def test_an_unauthenticated_socket_is_closed_past_a_few_kb_without_buffering(
    gateway_factory: Factory, settings: Settings
) -> None:
    """As measured: a frame claiming 5 MB, most of it sent, before any auth. Closed 1009 at its header."""
    gateway = await gateway_factory(settings.with_overrides(token=TOKEN))
    status, raw = await upgrade("127.0.0.1", _port(gateway))
    assert status == 101
    await raw.send(header(5_000_000) + b" " * 1000)
    assert close_code(await raw.frames()) == WSCloseCode.MESSAGE_TOO_BIG
    _, pushy = await upgrade("127.0.0.1", _port(gateway))
    sent = 0
    while sent < 4_500_000 and await pushy.send(header(5_000_000) if sent == 0 else b" " * 65536):
        sent += 65536
    assert sent < 4_500_000  # the gateway hung up long before
    assert gateway.app[BUFFERS].peak == 0  # and held not one byte for either frame


async def test_a_few_kb_before_auth_in_all_then_closed(gateway_factory: Factory, settings: Settings) -> None:
    gateway = await gateway_factory(settings.with_overrides(token=TOKEN, preauth_bytes=4096))
    status, raw = await upgrade("127.0.0.1", _port(gateway))
    assert status == 101
    ping = text_frame(json.dumps({"type": "ping", "pad": "x" * 3000}))
    await raw.send(ping + ping)  # each within the limit, together beyond it
    assert close_code(await raw.frames()) == WSCloseCode.MESSAGE_TOO_BIG


@pytest.mark.parametrize(
    "first",
    [
        "not json",
        '{"type":"ping","id":"p"}',
        '{"type":"auth"}',
        '{"type":"auth","token":"wrong"}',
        b"\x00binary",
    ],
)
async def test_any_first_frame_but_a_valid_auth_is_unauthorized(
    gateway_factory: Factory, settings: Settings, first: str | bytes
) -> None:
    gateway = await gateway_factory(settings.with_overrides(token=TOKEN))
    ws = await gateway.ws()
    await (ws.send_bytes(first) if isinstance(first, bytes) else ws.send_str(first))
    answer = await recv(ws)
    assert (answer["type"], answer["code"]) == ("error", "UNAUTHORIZED")
    assert (await ws.receive(timeout=10)).type == WSMsgType.CLOSE
    assert ws.close_code == WSCloseCode.POLICY_VIOLATION


async def test_connections_are_capped_per_address_and_in_total(gateway_factory: Factory, settings: Settings) -> None:
    gateway = await gateway_factory(settings.with_overrides(max_connections_per_address=2, max_connections=3))
    first, second = await gateway.ws(), await gateway.ws()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gateway.ws()
    assert refused.value.status == 429 and refused.value.headers is not None
    assert refused.value.headers["Retry-After"] == "1"
    await first.close()
    await _eventually(lambda: gateway.app[CAPS].count == 1)
    third = await gateway.ws()  # the slot came back
    assert await request(third, {"type": "ping", "id": 1}) == {"type": "pong", "id": 1, "requestId": 1}

    total = await gateway_factory(settings.with_overrides(max_connections_per_address=0, max_connections=1))
    only = await total.ws()
    with pytest.raises(aiohttp.WSServerHandshakeError) as full:
        await total.ws()
    assert full.value.status == 503
    for ws in (second, third, only):
        await ws.close()


async def test_unread_data_across_all_connections_is_capped(gateway_factory: Factory, settings: Settings) -> None:
    gateway = await gateway_factory(settings.with_overrides(max_buffered_bytes=100_000))
    budget = gateway.app[BUFFERS]
    payload = json.dumps({"type": "ping", "id": "big", "pad": ""})
    payload = payload.replace('"pad": ""', '"pad": "' + "x" * (80_000 - len(payload)) + '"')
    assert len(payload) == 80_000
    _, slow = await upgrade("127.0.0.1", _port(gateway))
    await slow.send(header(80_000) + payload[:1000].encode())
    await _eventually(lambda: budget.used == 80_000)  # reserved at the header, before the payload
    _, greedy = await upgrade("127.0.0.1", _port(gateway))
    await greedy.send(header(50_000))
    assert close_code(await greedy.frames()) == WSCloseCode.TRY_AGAIN_LATER
    await slow.send(payload[1000:].encode())
    await _eventually(lambda: budget.used == 0)  # handled: returned
    slow.close()


async def test_a_frame_not_completed_in_time_closes_its_socket(gateway_factory: Factory, settings: Settings) -> None:
    gateway = await gateway_factory(settings.with_overrides(frame_timeout_s=0.3))
    _, raw = await upgrade("127.0.0.1", _port(gateway))
    await raw.send(header(1000) + b'{"type":')  # and then nothing more
    assert close_code(await raw.frames()) == WSCloseCode.POLICY_VIOLATION
    assert gateway.app[BUFFERS].used == 0


@pytest.mark.parametrize("dribble", [b"", b"GET /gateway HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "])
async def test_a_silent_or_dribbling_handshake_is_dropped(
    gateway_factory: Factory, settings: Settings, dribble: bytes
) -> None:
    """As measured: such connections were held 75-100 s each."""
    gateway = await gateway_factory(settings.with_overrides(handshake_timeout_s=0.3))
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(gateway))
    started = time.monotonic()
    writer.write(dribble)

    async def keep_dribbling() -> None:
        while not writer.is_closing():
            writer.write(b"x")
            await asyncio.sleep(0.05)

    dribbler = asyncio.create_task(keep_dribbling()) if dribble else None
    assert await asyncio.wait_for(reader.read(), 20) == b""  # closed by the gateway, no response
    assert time.monotonic() - started < 15
    if dribbler is not None:
        dribbler.cancel()
    writer.close()


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/", "/static/app.js", "/gateway", "/no-such-page"])
async def test_every_http_endpoint_answers_only_to_loopback_names_without_a_token(
    gateway_factory: Factory, settings: Settings, path: str
) -> None:
    """DNS rebinding: /metrics answered `Host: evil.com` while the WebSocket refused it."""
    gateway = await gateway_factory(settings)
    port = _port(gateway)
    refused = await gateway.client.get(path, headers={"Host": f"evil.example:{port}"})
    assert refused.status == 403
    allowed = await gateway.client.get(path, headers={"Host": f"localhost:{port}"})
    assert allowed.status != 403
    with_token = await gateway_factory(settings.with_overrides(token=TOKEN))
    answered = await with_token.client.get("/healthz", headers={"Host": f"gateway.example:{port}"})
    assert answered.status == 200  # with a token, the token decides (and /healthz needs none)


async def test_an_sdk_app_refused_by_the_host_rule_reads_an_anthropic_error(
    gateway_factory: Factory, settings: Settings
) -> None:
    """An Anthropic SDK app pointed at a rebound name gets the refusal in the API's error shape, so the SDK raises
    PermissionDeniedError with the reason instead of failing to parse a plain-text body."""
    gateway = await gateway_factory(settings)
    port = _port(gateway)
    refused = await gateway.client.post("/v1/messages", json={}, headers={"Host": f"evil.example:{port}"})
    assert refused.status == 403
    body = await refused.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "permission_error"
    assert "loopback" in body["error"]["message"]


async def test_a_client_that_waits_for_its_answers_is_never_limited(
    gateway_factory: Factory, settings: Settings
) -> None:
    """As measured: a batch job sending each request when the last was answered got RATE_LIMITED above 50/s."""
    ws = await (await gateway_factory(settings.with_overrides(frames_per_second=2, frame_burst=1))).ws()
    for n in range(300):
        assert await request(ws, {"type": "ping", "id": n}) == {"type": "pong", "id": n, "requestId": n}


async def test_pipelined_frames_are_limited_with_retry_after_but_cancel_always_passes(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    ws = await (await gateway_factory(settings.with_overrides(frames_per_second=1, frame_burst=2))).ws()
    fake.queue(Reply(text="a b c d e f", hold_after_deltas=1))
    await send(ws, {"type": "chat.send", "id": "s", "content": "hello"})
    frames = await collect(ws, until=("chat.stream.delta",))
    session_id = frames[0]["sessionId"]
    for n in range(20):
        await send(ws, {"type": "ping", "id": n})
    await send(ws, {"type": "chat.cancel", "id": "stop", "sessionId": session_id})
    answers: list[dict[str, Any]] = []
    while not any(a.get("id") == "stop" for a in answers):
        answers.append(await recv(ws))
    limited = [a for a in answers if a.get("code") == "RATE_LIMITED"]
    assert len(limited) >= 15 and all(a["retryAfter"] > 0 and a["retryable"] for a in limited)
    assert {a["id"] for a in limited} <= set(range(20))  # each refusal names its frame
    assert next(a for a in answers if a.get("id") == "stop")["type"] == "chat.cancelled"


async def test_bytes_are_paced_not_refused(gateway_factory: Factory, settings: Settings) -> None:
    """A client sending more bytes than its share is slowed (not read for a while), never refused."""
    ws = await (await gateway_factory(settings.with_overrides(bytes_per_second=200_000, byte_burst=100_000))).ws()
    started = time.monotonic()
    for n in range(4):
        padded = {"type": "ping", "id": n, "pad": "x" * 99_950}
        assert await request(ws, padded) == {"type": "pong", "id": n, "requestId": n}
    # 100 KB in reserve, then 200 KB/s: the 3rd and 4th frames each wait 0.5 s to be read. A lower bound: load
    # can only make it longer.
    assert time.monotonic() - started >= 0.95


async def test_a_maximal_frame_of_tiny_keys_is_refused_cheaply(gateway_factory: Factory, settings: Settings) -> None:
    """As measured: 4 MiB of small keys blocked the loop 171 ms. Now the parser stops after 1,024 values."""
    ws = await (await gateway_factory(settings)).ws()
    keys = ",".join(f'"k{n}":0' for n in range(350_000))
    await ws.send_str('{"type":"ping","id":"big",' + keys + "}")
    refused = await recv(ws)
    assert (refused["code"], refused["id"]) == ("INVALID_MESSAGE", None)
    assert "more than 1024 JSON values" in refused["message"]
    assert await request(ws, {"type": "ping", "id": 2}) == {"type": "pong", "id": 2, "requestId": 2}


async def test_fragmented_messages_and_interleaved_pings_pass_the_guard_intact(
    gateway_factory: Factory, settings: Settings
) -> None:
    """The guard follows frame boundaries itself: a message in three fragments, a ping between them, small, 16-bit and
    64-bit lengths, all in odd-sized writes, must reach the handler exactly as sent."""
    gateway = await gateway_factory(settings)
    _, raw = await upgrade("127.0.0.1", _port(gateway))
    message = json.dumps({"type": "ping", "id": "frag", "pad": "y" * 70_000}).encode()
    parts = [message[:10], message[10:200], message[200:]]
    stream = (
        header(len(parts[0]), opcode=0x1, fin=False)
        + parts[0]
        + header(4, opcode=0x9)  # a ping between fragments
        + b"ping"
        + header(len(parts[1]), opcode=0x0, fin=False)
        + parts[1]
        + header(len(parts[2]), opcode=0x0, fin=True)
        + parts[2]
        + text_frame(json.dumps({"type": "ping", "id": "after"}))
    )
    for start in range(0, len(stream), 7_777):  # boundaries that fall inside headers and payloads alike
        await raw.send(stream[start : start + 7_777])
    await _eventually(lambda: gateway.app[BUFFERS].used == 0)
    raw.writer.write(header(2, opcode=0x8) + b"\x03\xe8")  # close, 1000
    frames = await raw.frames()
    pongs = [payload for opcode, payload in frames if opcode == 0xA]
    answers = [json.loads(payload) for opcode, payload in frames if opcode == 0x1]
    assert pongs == [b"ping"]
    assert [a["id"] for a in answers] == ["frag", "after"] and all(a["type"] == "pong" for a in answers)
