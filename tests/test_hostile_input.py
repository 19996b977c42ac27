"""Hostile but well-formed input: NUL, lone surrogates, a megabyte of emoji, SQL and path fragments as ids.
Each gets a clean answer, and whatever is accepted is stored and returned exactly."""

from __future__ import annotations

import json

import pytest
from aiohttp import ClientWebSocketResponse

from tests.conftest import chat, deltas, recv, request
from tests.databases import rows
from tests.fake_anthropic import FakeAnthropic, Reply

FRAGMENTS = [
    "'; DROP TABLE sessions; --",
    '" OR 1=1 --',
    "../../../../etc/passwd",
    "..\\..\\windows\\system32",
    "/dev/zero",
    "%00%2e%2e%2f",
    "${jndi:ldap://x}",
    "<script>alert(1)</script>",
    "\u202ereversed",
    "null",
]


async def _raw(ws: ClientWebSocketResponse, text: str) -> dict[str, object]:
    await ws.send_str(text)
    return await recv(ws)


@pytest.mark.parametrize("field", ["content", "sessionId", "model", "idempotencyKey"])
async def test_nul_is_refused_naming_the_field(ws: ClientWebSocketResponse, fake: FakeAnthropic, field: str) -> None:
    frame = {"type": "chat.send", "id": "n", "content": "fine", field: "bad\u0000value"}
    answer = await request(ws, frame)
    assert (answer["code"], answer["field"], answer["id"]) == ("INVALID_MESSAGE", field, "n")
    assert "NUL" in str(answer["message"])
    assert fake.requests == []


async def test_lone_surrogates_are_refused_and_pairs_are_text(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, db_url: str
) -> None:
    # JSON lets a lone "\ud800" through; UTF-8 (the socket and both databases) cannot carry it.
    lone = await _raw(ws, '{"type":"chat.send","id":"s","content":"half \\ud800 a pair"}')
    assert (lone["code"], lone["field"], lone["id"]) == ("INVALID_MESSAGE", "content", "s")
    bad_id = await _raw(ws, '{"type":"ping","id":"\\udfff"}')
    assert (bad_id["code"], bad_id["field"], bad_id["id"]) == ("INVALID_MESSAGE", "id", None)
    # A proper pair written as escapes is just an emoji.
    frames = [await _raw(ws, '{"type":"chat.send","id":"p","content":"smile \\ud83d\\ude00"}')]
    while frames[-1]["type"] != "chat.stream.end":
        frames.append(await recv(ws))
    assert deltas(frames) == "You said: smile 😀"
    assert await rows(db_url, "select text from messages where role = 'user'") == [("smile 😀",)]


async def test_a_megabyte_of_emoji_is_stored_and_returned_exactly(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, db_url: str
) -> None:
    content = "😀🏳️‍🌈👩🏽‍💻" * 35_000  # 1.0 MB of UTF-8, with joiners and modifiers
    assert len(content.encode()) > 1_000_000 and len(content) < 1_000_000
    fake.queue(Reply(text="got it"))
    await ws.send_str(json.dumps({"type": "chat.send", "id": "e", "content": content}, ensure_ascii=False))
    frames = [await recv(ws)]
    while frames[-1]["type"] not in ("chat.stream.end", "error"):
        frames.append(await recv(ws))
    assert frames[-1]["type"] == "chat.stream.end", frames[-1]
    assert fake.requests[-1].body["messages"][0]["content"][0]["text"] == content  # sent upstream exactly
    history = await request(ws, {"type": "session.history", "sessionId": frames[0]["sessionId"]})
    assert history["messages"][0]["text"] == content
    assert await rows(db_url, "select text from messages where role = 'user'") == [(content,)]


@pytest.mark.parametrize("fragment", FRAGMENTS)
async def test_sql_and_path_fragments_as_ids(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, db_url: str, fragment: str
) -> None:
    missing = await request(ws, {"type": "session.history", "id": fragment, "sessionId": fragment})
    assert (missing["code"], missing["sessionId"], missing["id"]) == ("SESSION_NOT_FOUND", fragment, fragment)
    agent = await request(ws, {"type": "chat.send", "id": 1, "content": "hi", "agentId": fragment})
    assert agent["code"] in ("AGENT_NOT_FOUND", "INVALID_MESSAGE") and agent["id"] == 1
    deleted = await request(ws, {"type": "session.delete", "sessionId": fragment})
    assert deleted["type"] in ("session.deleted", "error")
    # Stored exactly where a free string is allowed.
    end = (await chat(ws, fragment, idempotencyKey=fragment, model=fragment[:128]))[-1]
    assert end["type"] == "chat.stream.end", end
    assert await rows(db_url, "select text, idempotency_key from messages where role = 'user'") == [
        (fragment, fragment)
    ]
    assert await rows(db_url, "select count(*) from sessions") == [(1,)]  # nothing dropped, nothing extra
    assert (await chat(ws, "again", idempotencyKey=fragment))[-1]["type"] == "chat.state"
