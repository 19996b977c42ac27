"""A continued session sends back exactly what the model returned, and only its own agent may continue it.

The real API refuses a thinking block that differs in any way from what it streamed (the fake does too:
tests/api_rules.py), so a reply stored with a lost or changed thinking chunk breaks every later turn of its session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import ClientWebSocketResponse

from gateway.settings import Settings
from tests.api_rules import sign_thinking
from tests.conftest import Gateway, chat, deltas, recv, request, send
from tests.databases import rows
from tests.fake_anthropic import FakeAnthropic, Reply

Factory = Callable[[Settings], Awaitable[Gateway]]
THOUGHT = "First I weigh the question,  then   the answer.\n"


async def test_replayed_thinking_is_exactly_what_was_streamed(ws: ClientWebSocketResponse, fake: FakeAnthropic) -> None:
    fake.queue(Reply(text="An answer.", thinking=THOUGHT, chunk_words=1))
    first = await chat(ws, "think first")
    streamed = deltas(first, "chat.stream.thinking")
    assert streamed == THOUGHT and len([f for f in first if f["type"] == "chat.stream.thinking"]) == 8
    second = await chat(ws, "and now?", sessionId=first[0]["sessionId"])
    assert second[-1]["type"] == "chat.stream.end", second[-1]
    replayed = fake.requests[-1].body["messages"][1]
    assert replayed == {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": streamed, "signature": sign_thinking(THOUGHT)},
            {"type": "text", "text": "An answer.", "cache_control": {"type": "ephemeral"}},
        ],
    }
    assert fake.refusals == []


async def test_a_cancelled_reply_replays_its_signed_thinking_and_partial_text(
    ws: ClientWebSocketResponse, fake: FakeAnthropic
) -> None:
    fake.queue(Reply(text="one two three four", thinking=THOUGHT, hold_after_deltas=2))
    await send(ws, {"type": "chat.send", "id": "s1", "content": "talk"})
    await fake.wait_held()
    session_id = (await recv(ws))["sessionId"]
    await send(ws, {"type": "chat.cancel", "id": "c1", "sessionId": session_id})
    while (await recv(ws))["type"] != "chat.stream.end":
        pass
    assert (await recv(ws))["type"] == "chat.cancelled"
    assert (await chat(ws, "go on", sessionId=session_id))[-1]["type"] == "chat.stream.end"
    assert fake.requests[-1].body["messages"][1]["content"] == [
        {"type": "thinking", "thinking": THOUGHT, "signature": sign_thinking(THOUGHT)},
        {"type": "text", "text": "one two ", "cache_control": {"type": "ephemeral"}},
    ]
    assert fake.refusals == []


async def test_a_session_of_another_agent_is_refused_and_nothing_is_written(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic, db_url: str
) -> None:
    (settings.agents_dir / "writer").mkdir(parents=True)
    (settings.agents_dir / "writer" / "SYSTEM.md").write_text("You are Writer.\n", encoding="utf-8")
    writer = await (await gateway_factory(settings)).ws()
    created = await chat(writer, "draft it", agentId="writer")
    session_id = created[0]["sessionId"]
    before = await _snapshot(db_url)
    requests_before = len(fake.requests)
    # This process last wrote the session (its snapshot answers); a second process reads it over SQL.
    other = await (await gateway_factory(settings)).ws()
    for socket in (writer, other):
        for agent in ("default", "Writer"):
            frames = await chat(socket, "let me in", sessionId=session_id, agentId=agent, id="x")
            assert frames == [
                {
                    "type": "error",
                    "id": "x",
                    "requestId": "x",
                    "code": "SESSION_NOT_FOUND",
                    "message": f"session {session_id} does not exist",
                    "retryable": False,
                    "sessionId": session_id,
                }
            ]
    assert await _snapshot(db_url) == before
    assert len(fake.requests) == requests_before
    # The owner still continues it, through either process.
    assert (await chat(other, "go on", sessionId=session_id, agentId="writer"))[-1]["type"] == "chat.stream.end"
    history = await request(writer, {"type": "session.history", "sessionId": session_id})
    assert [m["role"] for m in history["messages"]] == ["user", "assistant"] * 2


async def _snapshot(db_url: str) -> list[object]:
    """Everything a refused send could have written."""
    return [
        await rows(db_url, "select id, agent_id, message_count, updated_at from sessions order by id"),
        await rows(db_url, "select id, session_id, role, status, updated_at from messages order by id"),
        await rows(db_url, "select id from usage_records order by id"),
    ]
