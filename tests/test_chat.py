"""Streaming chat over a real WebSocket, through the real SDK, against the fake upstream."""

from __future__ import annotations

import time
from pathlib import Path

from aiohttp import ClientWebSocketResponse

from gateway.server.handlers import SERVICES
from gateway.settings import Settings
from tests.conftest import Gateway, chat, collect, deltas, recv, request, send
from tests.databases import rows, scalar
from tests.fake_anthropic import FakeAnthropic, Reply


async def test_first_send_creates_session_and_streams_reply(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, db_url: str
) -> None:
    # 10 ms before each of its 6 deltas: the stream takes at least 60 ms.
    fake.queue(Reply(text="Hello there, friend.", thinking="Hmm, a greeting.", delay_s=0.01))
    started = time.monotonic()
    frames = await chat(ws, "hi", id="t1")
    elapsed_ms = (time.monotonic() - started) * 1000
    types = [f["type"] for f in frames]
    assert types[0] == "session.created"
    assert types[1] == "chat.stream.start"
    assert types[-1] == "chat.stream.end"
    assert types.count("chat.stream.delta") == 3
    assert all(f["id"] == "t1" for f in frames)
    created = frames[0]
    assert created["sessionKey"] == f"agent:default:{created['sessionId']}"
    assert created["agentId"] == "default"
    assert frames[1]["model"] == "claude-sonnet-5-5"
    assert deltas(frames) == "Hello there, friend."
    # Thinking arrives on its own frames, never mixed into the text.
    assert deltas(frames, "chat.stream.thinking") == "Hmm, a greeting."
    end = frames[-1]
    assert end["stopReason"] == "end_turn"
    assert set(end["usage"]) >= {"inputTokens", "outputTokens", "cacheCreationInputTokens", "cacheReadInputTokens"}
    assert set(end["cost"]) >= {"inputCost", "outputCost", "cacheCost", "totalCost"}
    assert end["cost"]["totalCost"] > 0
    assert 60 <= end["durationMs"] <= elapsed_ms
    assert end["durationMs"] == await scalar(db_url, "select duration_ms from usage_records")
    sent = fake.requests[-1].body
    assert sent["model"] == "claude-sonnet-5-5"
    assert sent["system"][0]["text"] == "You are a helpful AI assistant."


async def test_cost_uses_sonnet_5_5_prices(ws: ClientWebSocketResponse, fake: FakeAnthropic) -> None:
    fake.queue(
        Reply(
            text="ok", input_tokens=1_000_000, output_tokens=100_000, cache_read=1_000_000, cache_creation_5m=1_000_000
        )
    )
    end = (await chat(ws, "price me"))[-1]
    # $2 input + $1 output (100K x $10/M) + $2.50 5m write + $0.10 cache read per the published table.
    assert end["cost"]["inputCost"] == 2.0
    assert end["cost"]["outputCost"] == 1.0
    assert end["cost"]["cacheCost"] == 2.6
    assert end["cost"]["totalCost"] == 5.6


async def test_history_is_sent_and_sessions_are_isolated(ws: ClientWebSocketResponse, fake: FakeAnthropic) -> None:
    first = await chat(ws, "my name is Ada")
    session_id = first[0]["sessionId"]
    await chat(ws, "what is my name?", sessionId=session_id)
    sent = fake.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]
    assert sent[0]["content"][0]["text"] == "my name is Ada"
    # The reply goes back as the blocks the API returned: thinking with its signature, then text.
    assert sent[1]["content"][0]["type"] == "thinking"
    assert sent[1]["content"][0]["signature"]
    assert sent[1]["content"][-1]["text"] == "You said: my name is Ada"
    fresh = await chat(ws, "new chat")
    assert fresh[0]["type"] == "session.created"
    assert fresh[0]["sessionId"] != session_id
    assert len(fake.requests[-1].body["messages"]) == 1


async def test_model_and_max_tokens_are_passed(ws: ClientWebSocketResponse, fake: FakeAnthropic) -> None:
    frames = await chat(ws, "hi", model="claude-opus-5-5", maxTokens=123)
    assert frames[1]["model"] == "claude-opus-5-5"
    assert fake.requests[-1].body["model"] == "claude-opus-5-5"
    assert fake.requests[-1].body["max_tokens"] == 123


async def test_session_list_history_and_delete(ws: ClientWebSocketResponse, db_url: str) -> None:
    a = (await chat(ws, "first session title"))[0]["sessionId"]
    b = (await chat(ws, "second"))[0]["sessionId"]
    await chat(ws, "again", sessionId=a)
    listed = await request(ws, {"type": "session.list", "id": "l1"})
    assert listed["type"] == "session.list" and listed["id"] == "l1"
    ids = [s["sessionId"] for s in listed["sessions"]]
    assert ids == [a, b]  # most recently updated first
    first = listed["sessions"][0]
    assert first["title"] == "first session title"
    assert first["messageCount"] == 4
    assert first["sessionKey"] == f"agent:default:{a}"
    page = await request(ws, {"type": "session.list", "limit": 1})
    assert len(page["sessions"]) == 1 and page["nextCursor"]
    rest = await request(ws, {"type": "session.list", "limit": 1, "cursor": page["nextCursor"]})
    assert [s["sessionId"] for s in rest["sessions"]] == [b]
    history = await request(ws, {"type": "session.history", "sessionId": a})
    assert [m["role"] for m in history["messages"]] == ["user", "assistant", "user", "assistant"]
    assert history["messages"][1]["text"] == "You said: first session title"
    # A session was last updated when its last reply ended, not when that reply's question was stored.
    assert first["updatedAt"] == history["messages"][-1]["updatedAt"] > history["messages"][-2]["createdAt"]
    deleted = await request(ws, {"type": "session.delete", "id": "d", "sessionId": a})
    assert deleted["type"] == "session.deleted"
    missing = await request(ws, {"type": "session.history", "sessionId": a})
    assert missing["code"] == "SESSION_NOT_FOUND"
    # Usage outlives the session: accounting must not change when history is deleted.
    assert await scalar(db_url, "select count(*) from usage_records where session_id = :s", s=a) == 2
    assert await scalar(db_url, "select count(*) from messages where session_id = :s", s=a) == 0


async def test_a_continued_sessions_start_frame_names_the_session_and_the_reply(
    ws: ClientWebSocketResponse, db_url: str
) -> None:
    """With no session.created before it, chat.stream.start is where a client reads which session and reply stream."""
    session_id = (await chat(ws, "first"))[0]["sessionId"]
    frames = await chat(ws, "second", id="t2", sessionId=session_id)
    reply_id = await scalar(
        db_url, "select id from messages where session_id = :s and role = 'assistant' order by seq desc", s=session_id
    )
    assert frames[0] == {
        "type": "chat.stream.start",
        "id": "t2",
        "requestId": "t2",
        "sessionId": session_id,
        "messageId": reply_id,
        "model": "claude-sonnet-5-5",
    }


async def test_a_send_without_a_model_uses_the_sessions_last_else_the_agents(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    """docs/PROTOCOL.md, `model`: in an existing session the model it last used; in a new one the agent's."""
    (settings.agents_dir / "writer").mkdir(parents=True)
    (settings.agents_dir / "writer" / "agent.toml").write_text('model = "claude-opus-5-5"\n', encoding="utf-8")
    first = await chat(ws, "draft it", agentId="writer")
    assert (first[1]["model"], fake.requests[-1].body["model"]) == ("claude-opus-5-5", "claude-opus-5-5")
    session_id = first[0]["sessionId"]
    await chat(ws, "now cheaper", sessionId=session_id, model="claude-sonnet-5-5")
    again = await chat(ws, "and again", sessionId=session_id)
    assert (again[0]["model"], fake.requests[-1].body["model"]) == ("claude-sonnet-5-5", "claude-sonnet-5-5")


async def test_unknown_session_is_refused_without_upstream_call(
    ws: ClientWebSocketResponse, fake: FakeAnthropic
) -> None:
    frames = await chat(ws, "hello", sessionId="nope")
    assert frames == [
        {
            "type": "error",
            "id": "t1",
            "requestId": "t1",
            "code": "SESSION_NOT_FOUND",
            "message": frames[0]["message"],
            "retryable": False,
            "sessionId": "nope",
        }
    ]
    assert fake.requests == []


async def test_restart_keeps_sessions_history_and_usage(
    gateway_factory: object, settings: Settings, fake: FakeAnthropic, tmp_path: Path
) -> None:
    first: Gateway = await gateway_factory(settings)  # type: ignore[operator]
    ws1 = await first.ws()
    session_id = (await chat(ws1, "remember 42"))[0]["sessionId"]
    report1 = await request(ws1, {"type": "usage.query"})
    await ws1.close()
    await first.client.close()

    second: Gateway = await gateway_factory(settings)  # type: ignore[operator]
    ws2 = await second.ws()
    listed = await request(ws2, {"type": "session.list"})
    assert [s["sessionId"] for s in listed["sessions"]] == [session_id]
    report2 = await request(ws2, {"type": "usage.query"})
    assert report2["perModel"] == report1["perModel"]
    await chat(ws2, "what number?", sessionId=session_id)
    assert fake.requests[-1].body["messages"][0]["content"][0]["text"] == "remember 42"
    await ws2.close()


async def test_usage_report_matches_sql_view(ws: ClientWebSocketResponse, fake: FakeAnthropic, db_url: str) -> None:
    fake.queue(Reply(input_tokens=100, output_tokens=10), Reply(input_tokens=200, output_tokens=20))
    await chat(ws, "one")
    await chat(ws, "two")
    report = await request(ws, {"type": "usage.query", "id": "u"})
    assert report["type"] == "usage.report"
    model = report["perModel"]["claude-sonnet-5-5"]
    assert model["inputTokens"] == 300 and model["outputTokens"] == 30 and model["requestCount"] == 2
    assert report["grandTotal"]["totalCost"] == model["totalCost"]
    view = "select model, request_count, input_tokens, output_tokens, total_cost_usd from usage_by_model"
    [row] = await rows(db_url, view)
    assert row[:4] == ("claude-sonnet-5-5", 2, 300, 30)
    # A float on SQLite, an exact NUMERIC on PostgreSQL (integer nano-USD divided by 1e9).
    assert abs(float(row[4]) - model["totalCost"]) < 1e-12


async def test_unknown_model_is_recorded_unpriced(ws: ClientWebSocketResponse, fake: FakeAnthropic) -> None:
    end = (await chat(ws, "hi", model="claude-experimental-9"))[-1]
    assert end["cost"]["totalCost"] is None and end["cost"]["priced"] is False
    report = await request(ws, {"type": "usage.query"})
    assert report["perModel"]["claude-experimental-9"]["unpricedRequests"] == 1
    assert report["grandTotal"]["unpricedRequests"] == 1


async def test_second_send_while_streaming_is_refused(
    gateway: Gateway, ws: ClientWebSocketResponse, fake: FakeAnthropic
) -> None:
    fake.queue(Reply(hold_after_deltas=1))
    await send(ws, {"type": "chat.send", "id": "a", "content": "long one"})
    created = await recv(ws)
    session_id = created["sessionId"]
    await fake.wait_held()
    await send(ws, {"type": "chat.send", "id": "b", "content": "again"})
    other = await gateway.ws()
    await send(other, {"type": "chat.send", "id": "c", "content": "intrude", "sessionId": session_id})
    refused_other = await recv(other)
    assert refused_other["code"] == "STREAM_IN_PROGRESS" and refused_other["id"] == "c"
    fake.release()
    frames = await collect(ws)
    refused = [f for f in frames if f["type"] == "error"]
    assert refused and refused[0]["code"] == "STREAM_IN_PROGRESS" and refused[0]["id"] == "b"
    rest = frames if frames[-1]["type"] == "chat.stream.end" else frames + await collect(ws)
    assert rest[-1]["type"] == "chat.stream.end" and rest[-1]["id"] == "a"
    # Free again once the stream ended.
    again = await chat(other, "now my turn", id="d", sessionId=session_id)
    assert again[-1]["type"] == "chat.stream.end"
    await other.close()


async def test_the_user_turn_is_stored_before_the_upstream_call(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, db_url: str
) -> None:
    """Read over SQL while the upstream holds the reply before its first token: a crash now loses no user turn."""
    fake.queue(Reply(text="later", thinking=None, hold_after_deltas=0))
    await send(ws, {"type": "chat.send", "id": "a", "content": "keep me"})
    await fake.wait_held()
    [(session_id, count)] = await rows(db_url, "select id, message_count from sessions")
    assert count == 2
    stored = await rows(
        db_url, "select seq, role, status, text from messages where session_id = :s order by seq", s=session_id
    )
    assert stored == [(0, "user", "complete", "keep me"), (1, "assistant", "streaming", "")]
    # Its usage row may exist already: provisional from message_start on (chat/spend.py).
    assert [status for (status,) in await rows(db_url, "select status from usage_records")] in ([], ["streaming"])
    fake.release()
    assert (await collect(ws))[-1]["type"] == "chat.stream.end"
    done = await rows(
        db_url, "select role, status, text from messages where session_id = :s order by seq", s=session_id
    )
    assert done == [("user", "complete", "keep me"), ("assistant", "complete", "later")]


async def test_finished_turns_leave_nothing_behind_in_the_process(gateway: Gateway) -> None:
    """A long-running gateway must not keep every finished turn (its context, its reply) for as long as it runs: once
    a turn has ended, the process holds it nowhere, whichever session it was in."""
    ws = await gateway.ws()
    for n in range(5):
        assert (await chat(ws, f"question {n}", id=f"q{n}"))[-1]["type"] == "chat.stream.end"
    services = gateway.app[SERVICES]
    assert services.live_turns == {}
