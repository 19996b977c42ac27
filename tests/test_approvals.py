"""Approvals are database rows a turn waits on: answered once (allow_once, allow_session, deny), expiring into a
denial, visible to a client that reconnects (session.pending, session.history), answerable from there, and a
waiting turn ends on chat.cancel. Client tools: the client runs them and answers with chat.tool.result."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse

from gateway.server.handlers import SERVICES
from gateway.settings import Settings
from tests.conftest import Gateway, chat, collect, request, send
from tests.fake_anthropic import FakeAnthropic, Reply, tool_reply, tool_use
from tests.sql import sql_rows

ASK = '[tools.approval]\n"read_*" = "ask"\n'
WEATHER = {"name": "get_weather", "description": "Weather now.", "input_schema": {"type": "object"}}


def make_agent(settings: Settings, toml: str = ASK) -> None:
    root = settings.agents_dir / "careful"
    (root / "skills" / "pdf").mkdir(parents=True)
    (root / "skills" / "pdf" / "SKILL.md").write_text("---\nname: pdf\ndescription: PDFs.\n---\nthe body")
    (root / "agent.toml").write_text(toml)


async def start(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, *replies: Reply, **fields: Any
) -> list[dict[str, Any]]:
    """Send, and read up to the approval request."""
    fake.queue(*replies)
    await send(ws, {"type": "chat.send", "id": "t1", "content": "go", "agentId": "careful", **fields})
    return await collect(ws, until=("chat.tool.approval", "chat.stream.end", "error"))


async def test_allow_once_runs_the_call(ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings) -> None:
    make_agent(settings)
    call = tool_use("read_skill", {"name": "pdf"})
    frames = await start(ws, fake, tool_reply(call), Reply(text="done"))
    ask = frames[-1]
    assert (ask["type"], ask["toolUseId"], ask["name"], ask["input"]) == (
        "chat.tool.approval",
        call["id"],
        "read_skill",
        {"name": "pdf"},
    )
    assert ask["expiresAt"].endswith("Z") and ask["executor"] == "builtin"
    assert next(f for f in frames if f["type"] == "chat.tool.call")["policy"] == "ask"
    pending = await request(ws, {"type": "session.pending", "id": "p", "sessionId": ask["sessionId"]})
    assert [p["toolUseId"] for p in pending["approvals"]] == [call["id"]]
    await send(ws, {"type": "chat.tool.approve", "id": "a1", "toolUseId": call["id"], "decision": "allow_once"})
    rest = await collect(ws)
    recorded = next(f for f in rest if f["type"] == "chat.tool.approval.recorded")
    assert (recorded["id"], recorded["decision"]) == ("a1", "allow_once")
    result = next(f for f in rest if f["type"] == "chat.tool.result")
    assert (result["status"], result["content"]) == ("done", "the body")
    assert rest[-1]["type"] == "chat.stream.end" and rest[-1]["status"] == "complete"
    again = await request(ws, {"type": "chat.tool.approve", "id": "a2", "toolUseId": call["id"], "decision": "deny"})
    assert (again["type"], again["code"], again["id"]) == ("error", "APPROVAL_NOT_PENDING", "a2")
    unknown = await request(
        ws, {"type": "chat.tool.approve", "id": "a3", "toolUseId": "toolu_nope", "decision": "deny"}
    )
    assert unknown["code"] == "TOOL_CALL_NOT_FOUND"


async def test_a_tool_input_beyond_64_bit_integers_reaches_the_client_exactly(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    """JSON has no integer limit and the model may write any number into a tool's input: the approval request (which
    also carries a time) and the call's frame give it digit for digit, like the next upstream request does."""
    make_agent(settings)
    huge = 2**70
    call = tool_use("read_skill", {"name": "pdf", "page": huge})
    frames = await start(ws, fake, tool_reply(call), Reply(text="done"))
    ask = frames[-1]
    assert (ask["type"], ask["input"]) == ("chat.tool.approval", {"name": "pdf", "page": huge})
    assert ask["expiresAt"].endswith("Z")
    assert next(f for f in frames if f["type"] == "chat.tool.call")["input"] == {"name": "pdf", "page": huge}
    await send(ws, {"type": "chat.tool.approve", "toolUseId": call["id"], "decision": "allow_once"})
    assert (await collect(ws))[-1]["status"] == "complete"
    assert fake.requests[-1].body["messages"][1]["content"][-1]["input"]["page"] == huge


async def test_deny_becomes_an_error_result_and_the_model_goes_on(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings, db_url: str
) -> None:
    make_agent(settings)
    call = tool_use("read_skill", {"name": "pdf"})
    await start(ws, fake, tool_reply(call), Reply(text="Understood, I will not."))
    await send(ws, {"type": "chat.tool.approve", "id": "a1", "toolUseId": call["id"], "decision": "deny"})
    rest = await collect(ws)
    result = next(f for f in rest if f["type"] == "chat.tool.result")
    assert (result["status"], result["isError"]) == ("denied", True) and "declined" in result["content"]
    assert rest[-1]["stopReason"] == "end_turn" and rest[-1]["requests"] == 2
    sent = fake.requests[-1].body["messages"][-1]["content"][0]
    assert sent["is_error"] is True and "declined" in sent["content"]
    rows = await sql_rows(db_url, "select status, decision from tool_calls")
    assert [(r["status"], r["decision"]) for r in rows] == [("denied", "deny")]


async def test_an_unanswered_approval_expires_into_a_denial(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings, "[tools]\napproval_timeout_s = 0.2\n" + ASK)
    call = tool_use("read_skill", {"name": "pdf"})
    await start(ws, fake, tool_reply(call), Reply(text="No answer; moving on."))
    rest = await collect(ws)
    result = next(f for f in rest if f["type"] == "chat.tool.result")
    assert result["status"] == "denied" and "no one answered" in result["content"]
    assert rest[-1]["type"] == "chat.stream.end"
    late = await request(
        ws, {"type": "chat.tool.approve", "id": "late", "toolUseId": call["id"], "decision": "allow_once"}
    )
    assert late["code"] == "APPROVAL_NOT_PENDING" and late["decision"] == "expired"


async def test_allow_session_stops_asking_for_that_tool(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings)
    first, second = tool_use("read_skill", {"name": "pdf"}), tool_use("read_skill", {"name": "x"})
    await start(ws, fake, tool_reply(first), tool_reply(second), Reply(text="done"))
    await send(ws, {"type": "chat.tool.approve", "id": "a1", "toolUseId": first["id"], "decision": "allow_session"})
    rest = await collect(ws)
    assert [f["type"] for f in rest].count("chat.tool.approval") == 0
    assert [f["toolUseId"] for f in rest if f["type"] == "chat.tool.result"] == [first["id"], second["id"]]
    # And in the session's next turn too.
    fake.queue(tool_reply(tool_use("read_skill", {"name": "pdf"})), Reply(text="ok"))
    frames = await chat(ws, "more", sessionId=rest[-1]["sessionId"])
    assert "chat.tool.approval" not in [f["type"] for f in frames] and frames[-1]["type"] == "chat.stream.end"


async def test_cancel_ends_a_turn_waiting_on_an_approval(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings, db_url: str
) -> None:
    make_agent(settings)
    call = tool_use("read_skill", {"name": "pdf"})
    frames = await start(ws, fake, tool_reply(call))
    session_id = frames[-1]["sessionId"]
    await send(ws, {"type": "chat.cancel", "id": "c1", "sessionId": session_id})
    rest = await collect(ws, until=("chat.cancelled",))
    result = next(f for f in rest if f["type"] == "chat.tool.result")
    assert (result["status"], result["content"]) == ("interrupted", "Not run: the user cancelled the turn.")
    end = next(f for f in rest if f["type"] == "chat.stream.end")
    assert (end["status"], end["stopReason"]) == ("cancelled", "cancelled")
    rows = await sql_rows(db_url, "select status from tool_calls")
    assert [r["status"] for r in rows] == ["interrupted"]
    fake.queue(Reply(text="fine"))
    assert (await chat(ws, "never mind", sessionId=session_id))[-1]["type"] == "chat.stream.end"
    assert fake.refusals == []


async def test_a_reconnected_client_sees_and_answers_the_approval(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings)
    call = tool_use("read_skill", {"name": "pdf"})
    first = await gateway.ws()
    frames = await start(first, fake, tool_reply(call), Reply(text="after reconnect"))
    session_id = frames[-1]["sessionId"]
    await first.close()
    second = await gateway.ws()
    history = await request(second, {"type": "session.history", "sessionId": session_id})
    assert [p["toolUseId"] for p in history["pending"]] == [call["id"]]
    everywhere = await request(second, {"type": "session.pending"})
    assert [p["sessionId"] for p in everywhere["approvals"]] == [session_id]
    await send(second, {"type": "chat.tool.approve", "id": "a1", "toolUseId": call["id"], "decision": "allow_once"})
    rest = await collect(second)
    assert rest[0]["type"] == "chat.tool.approval.recorded"
    # The answering connection took the turn over: it gets the rest of its frames, with the send's own id.
    assert rest[-1]["type"] == "chat.stream.end" and rest[-1]["id"] == "t1" and rest[-1]["status"] == "complete"
    assert next(f for f in rest if f["type"] == "chat.tool.result")["status"] == "done"
    assert "after reconnect" in "".join(f.get("delta", "") for f in rest if f["type"] == "chat.stream.delta")
    await second.close()


async def test_client_tool_round_trip(ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings) -> None:
    make_agent(settings, '[tools.approval]\nget_weather = "allow"\n')
    call = tool_use("get_weather", {"city": "Paris"})
    fake.queue(tool_reply(call), Reply(text="It is sunny."))
    await send(ws, {"type": "chat.send", "id": "t1", "content": "weather?", "agentId": "careful", "tools": [WEATHER]})
    frames = await collect(ws, until=("chat.tool.call",))
    assert frames[-1]["executor"] == "client" and frames[-1]["input"] == {"city": "Paris"}
    assert fake.requests[0].body["tools"][-1] == WEATHER
    await send(ws, {"type": "chat.tool.result", "id": "r1", "toolUseId": call["id"], "content": "sunny, 21 C"})
    rest = await collect(ws)
    assert rest[0] == {"type": "chat.tool.result.recorded", "id": "r1", "requestId": "r1", "toolUseId": call["id"]}
    assert next(f for f in rest if f["type"] == "chat.tool.result")["content"] == "sunny, 21 C"
    assert fake.requests[-1].body["messages"][-1]["content"][0]["content"] == "sunny, 21 C"
    stale = await request(ws, {"type": "chat.tool.result", "id": "r2", "toolUseId": call["id"], "content": "again"})
    assert stale["code"] == "TOOL_CALL_NOT_FOUND"


async def test_a_client_tool_nobody_answers_times_out_into_an_error(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings, '[tools]\nclient_timeout_s = 0.2\n[tools.approval]\nget_weather = "allow"\n')
    fake.queue(tool_reply(tool_use("get_weather", {})), Reply(text="I could not check."))
    frames = await chat(ws, "weather?", agentId="careful", tools=[WEATHER])
    result = next(f for f in frames if f["type"] == "chat.tool.result")
    assert result["isError"] is True and "no result within 0.2 s" in result["content"]
    assert frames[-1]["type"] == "chat.stream.end"


async def test_bad_client_tools_are_refused_before_anything_runs(ws: ClientWebSocketResponse) -> None:
    for tools, field_text in (
        ([{"name": "bad name", "input_schema": {"type": "object"}}], "name"),
        ([{"name": "x", "input_schema": {"type": "string"}}], "input_schema"),
        ([{"name": "x", "input_schema": {"type": "object"}, "cache_control": {}}], "unknown field"),
        ([{"name": "memory", "input_schema": {"type": "object"}}], "clashes"),
    ):
        answer = await request(ws, {"type": "chat.send", "id": "t", "content": "hi", "tools": tools})
        assert answer["type"] == "error" and answer["code"] == "INVALID_MESSAGE", answer
        assert field_text in answer["message"] and answer["field"] == "tools"


async def test_a_turn_whose_client_left_ends_after_its_calls_without_another_request(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    make_agent(settings, "[tools]\napproval_timeout_s = 0.3\n" + ASK)
    first = await gateway.ws()
    frames = await start(first, fake, tool_reply(tool_use("read_skill", {"name": "pdf"})), Reply(text="nobody reads"))
    turn = gateway.app[SERVICES].live_turns[frames[-1]["sessionId"]]
    await first.close()  # the turn waits on its approval without a client, and is not cancelled
    await asyncio.wait_for(asyncio.shield(turn.task), 10)
    assert len(fake.requests) == 1  # no one left to read a next reply: none was asked for
    rows = await sql_rows(db_url, "select status, decision from tool_calls")
    assert [(r["status"], r["decision"]) for r in rows] == [("denied", "expired")]
    messages = await sql_rows(db_url, "select role, status from messages order by seq")
    assert [m["status"] for m in messages] == ["complete", "complete", "complete"]
    # A client leaving while its turn waits is ordinary: nothing for the operator's log at ERROR.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_an_approval_answered_through_another_process(
    gateway_factory: Callable[[Settings], Awaitable[Gateway]], pg_settings: Settings, fake: FakeAnthropic
) -> None:
    """Two gateways on one PostgreSQL database: the turn runs in one, the answer reaches the other. The answer is a
    row, and the waiting turn reads it (within a second) without any socket state shared."""
    make_agent(pg_settings)
    a, b = await gateway_factory(pg_settings), await gateway_factory(pg_settings)
    on_a, on_b = await a.ws(), await b.ws()
    call = tool_use("read_skill", {"name": "pdf"})
    frames = await start(on_a, fake, tool_reply(call), Reply(text="approved elsewhere"))
    pending = await request(on_b, {"type": "session.pending", "sessionId": frames[-1]["sessionId"]})
    assert [p["toolUseId"] for p in pending["approvals"]] == [call["id"]]
    answer = await request(
        on_b, {"type": "chat.tool.approve", "id": "a1", "toolUseId": call["id"], "decision": "allow_once"}
    )
    assert answer["type"] == "chat.tool.approval.recorded"
    rest = await collect(on_a)
    assert next(f for f in rest if f["type"] == "chat.tool.result")["status"] == "done"
    assert rest[-1]["type"] == "chat.stream.end" and rest[-1]["status"] == "complete"
    await on_a.close()
    await on_b.close()
