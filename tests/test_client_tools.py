"""gateway.client and the tool loop: the events of a turn, approvals answered by a handler or by hand, and tools the
client runs itself (ClientTool), against a real gateway app and the fake upstream scripted to call tools."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from gateway.client import (
    ApprovalRequest,
    ClientTool,
    ConflictError,
    Decision,
    Delta,
    GatewayClient,
    StepEnd,
    ToolCall,
    ToolError,
    ToolResult,
)
from gateway.settings import Settings
from tests.conftest import Gateway
from tests.fake_anthropic import FakeAnthropic, Reply, tool_reply, tool_use

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def url_of(gateway: Gateway) -> str:
    return str(gateway.client.make_url("/gateway"))


def make_agent(settings: Settings, toml: str = "", tools_json: list[dict[str, Any]] | None = None) -> None:
    root = settings.agents_dir / "helper"
    (root / "skills" / "pdf").mkdir(parents=True)
    (root / "skills" / "pdf" / "SKILL.md").write_text("---\nname: pdf\ndescription: PDFs.\n---\nUse pdftotext.")
    (root / "agent.toml").write_text(toml)
    if tools_json is not None:
        (root / "tools.json").write_text(json.dumps(tools_json))


def sent_results(fake: FakeAnthropic) -> list[dict[str, Any]]:
    """The tool_result blocks the last model request carried."""
    return [b for b in fake.requests[-1].body["messages"][-1]["content"] if b["type"] == "tool_result"]


async def test_a_tool_turn_as_events_and_as_plain_text(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings)
    call = tool_use("read_skill", {"name": "pdf"})
    fake.queue(tool_reply(call, text="Let me look."), Reply(text="Use pdftotext.", thinking=None))
    async with GatewayClient.connect(url_of(gateway)) as gw:
        reply = gw.chat("How do I read a PDF?", agent_id="helper")
        events = [event async for event in reply.events()]
        kinds = [type(e).__name__ for e in events if not isinstance(e, Delta)]
        assert kinds == ["StepEnd", "ToolCall", "ToolResult"]
        step, called, result = (e for e in events if not isinstance(e, Delta))
        assert isinstance(step, StepEnd) and (step.step, step.stop_reason, step.tool_calls) == (1, "tool_use", 1)
        assert isinstance(called, ToolCall)
        assert (called.name, called.input, called.executor, called.policy) == (
            "read_skill",
            {"name": "pdf"},
            "builtin",
            "allow",
        )
        assert isinstance(result, ToolResult) and result.ok and result.content == "Use pdftotext."
        assert result.duration_ms is not None and result.tool_use_id == call["id"]
        assert reply.end is not None and (reply.end.steps, reply.end.requests, reply.end.tool_calls) == (2, 2, 1)
        assert reply.tool_calls == [called] and reply.tool_results == [result] and len(reply.steps) == 1
        assert reply.message_id == reply.end.message_id != step.message_id  # the turn's last reply

        # Plain iteration yields only text and thinking, the tool events are still recorded.
        fake.queue(tool_reply(tool_use("read_skill", {"name": "pdf"})), Reply(text="Again: pdftotext."))
        again = gw.chat("once more", session_id=reply.session_id)
        assert await again.text() == "Again: pdftotext."
        assert [r.status for r in again.tool_results] == ["done"]


@pytest.mark.parametrize(("decision", "status"), [("allow_once", "done"), ("deny", "denied")])
async def test_an_approval_handler_answers(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings, decision: Decision, status: str
) -> None:
    make_agent(settings, '[tools.approval]\nread_skill = "ask"\n')
    call = tool_use("read_skill", {"name": "pdf"})
    fake.queue(tool_reply(call), Reply(text="ok"))
    asked: list[ApprovalRequest] = []

    async def on_approval(request: ApprovalRequest) -> Decision:
        asked.append(request)
        return decision

    async with GatewayClient.connect(url_of(gateway)) as gw:
        reply = gw.chat("read it", agent_id="helper", on_approval=on_approval)
        assert await reply.text() == "ok"
    [request] = asked
    assert (request.tool_use_id, request.name, request.input) == (call["id"], "read_skill", {"name": "pdf"})
    assert request.expires_at is not None and request.expires_at.tzinfo is not None
    assert [(r.status, r.is_error) for r in reply.tool_results] == [(status, status != "done")]


async def test_approving_by_hand_from_the_events(gateway: Gateway, fake: FakeAnthropic, settings: Settings) -> None:
    make_agent(settings, '[tools.approval]\nread_skill = "ask"\n')
    fake.queue(tool_reply(tool_use("read_skill", {"name": "pdf"})), Reply(text="read"))
    async with GatewayClient.connect(url_of(gateway)) as gw:
        reply = gw.chat("read it", agent_id="helper")
        async for event in reply.events():
            if isinstance(event, ApprovalRequest):
                recorded = await reply.approve(event, "allow_once")
                assert recorded["type"] == "chat.tool.approval.recorded"
                with pytest.raises(ConflictError) as twice:
                    await reply.approve(event, "deny")
                assert twice.value.code == "APPROVAL_NOT_PENDING"
        assert [r.status for r in reply.tool_results] == ["done"]
        assert (await gw.pending(reply.session_id))["approvals"] == []


async def test_client_tools_run_once_approved_and_allow_session_stops_asking(
    gateway: Gateway, fake: FakeAnthropic
) -> None:
    """The default agent asks before a client tool runs; allowed for the session, it runs unasked, in this client
    and in a new one (which learns of the grant from the gateway, not from an approval request)."""
    ran: list[dict[str, Any]] = []

    async def weather(call: ToolCall) -> str:
        ran.append(call.input)
        return f"sunny in {call.input['city']}"

    tool = ClientTool("get_weather", weather, "The weather now.", WEATHER_SCHEMA)
    asked: list[str] = []

    async def on_approval(request: ApprovalRequest) -> Decision:
        asked.append(request.name)
        assert ran == []  # nothing runs before the answer
        return "allow_session"

    fake.queue(tool_reply(tool_use("get_weather", {"city": "Paris"})), Reply(text="Sunny."))
    async with GatewayClient.connect(url_of(gateway)) as gw:
        reply = gw.chat("weather?", tools=[tool], on_approval=on_approval)
        assert await reply.text() == "Sunny."
        assert fake.requests[0].body["tools"][-1] == tool.definition
        assert sent_results(fake)[0]["content"] == "sunny in Paris"
        fake.queue(tool_reply(tool_use("get_weather", {"city": "Oslo"})), Reply(text="Rain."))
        assert await gw.chat("and Oslo?", session_id=reply.session_id, tools=[tool], on_approval=on_approval).text()
    assert asked == ["get_weather"] and [r["city"] for r in ran] == ["Paris", "Oslo"]

    fake.queue(tool_reply(tool_use("get_weather", {"city": "Rome"})), Reply(text="Warm."))
    async with GatewayClient.connect(url_of(gateway)) as fresh:
        later = fresh.chat("and Rome?", session_id=reply.session_id, tools=[tool])  # no approval handler at all
        async with asyncio.timeout(10):
            assert await later.text() == "Warm."
    assert [r["city"] for r in ran] == ["Paris", "Oslo", "Rome"]
    assert [r.status for r in later.tool_results] == ["done"]


async def test_what_handlers_return_and_raise_reaches_the_model(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(
        settings,
        '[tools]\nclient_timeout_s = 60\n[tools.approval]\n"*" = "allow"\n',
        tools_json=[
            {"name": "lookup", "input_schema": {"type": "object"}},
            {"name": "orphan", "input_schema": {"type": "object"}},
        ],
    )

    async def failing(call: ToolCall) -> str:
        raise ToolError("no such city")

    async def crashing(call: ToolCall) -> str:
        raise RuntimeError("boom")

    async def structured(call: ToolCall) -> dict[str, Any]:
        return {"temp": 21, "unit": "C"}

    async def blocks(call: ToolCall) -> list[dict[str, Any]]:
        return [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]

    tools = [
        ClientTool("failing", failing),
        ClientTool("crashing", crashing),
        ClientTool("structured", structured),
        ClientTool("blocks", blocks),
    ]
    calls = [tool_use(name, {}) for name in ("failing", "crashing", "structured", "blocks", "lookup", "orphan")]
    fake.queue(tool_reply(*calls), Reply(text="done"))

    async def lookup(call: ToolCall) -> str:
        return "found it"

    async with GatewayClient.connect(url_of(gateway)) as gw:
        reply = gw.chat("go", agent_id="helper", tools=tools, tool_handlers={"lookup": lookup})
        async with asyncio.timeout(10):  # the orphan is answered at once, not after client_timeout_s
            assert await reply.text() == "done"
    results = {b["tool_use_id"]: b for b in sent_results(fake)}
    failing_r, crashing_r, structured_r, blocks_r, lookup_r, orphan_r = (results[c["id"]] for c in calls)
    assert (failing_r["is_error"], failing_r["content"]) == (True, "no such city")
    assert crashing_r["is_error"] is True and "RuntimeError: boom" in crashing_r["content"]
    assert json.loads(structured_r["content"]) == {"temp": 21, "unit": "C"}
    assert [b["text"] for b in blocks_r["content"]] == ["first", "second"]
    assert lookup_r["content"] == "found it" and not lookup_r.get("is_error")
    assert orphan_r["is_error"] is True and "no handler for the tool 'orphan'" in orphan_r["content"]


async def test_a_result_the_gateway_refuses_becomes_an_error_not_a_timeout(
    gateway_factory: Callable[[Settings], Awaitable[Gateway]], settings: Settings, fake: FakeAnthropic
) -> None:
    gateway = await gateway_factory(replace(settings, max_content_chars=300))

    async def huge(call: ToolCall) -> str:
        return "x" * 301

    async def many(call: ToolCall) -> list[dict[str, Any]]:
        return [{"type": "text", "text": str(i)} for i in range(400)]

    calls = [tool_use("huge", {}), tool_use("many", {})]
    fake.queue(tool_reply(*calls), Reply(text="ok"))

    async def allow(request: ApprovalRequest) -> Decision:
        return "allow_once"

    async with GatewayClient.connect(url_of(gateway)) as gw:
        reply = gw.chat("go", tools=[ClientTool("huge", huge), ClientTool("many", many)], on_approval=allow)
        async with asyncio.timeout(10):
            assert await reply.text() == "ok"
    huge_r, many_r = sent_results(fake)
    assert huge_r["is_error"] is True and huge_r["content"] == "Result refused: MESSAGE_TOO_LARGE"
    assert many_r["is_error"] is True and "too many parts" in many_r["content"]


async def test_agents_lists_what_a_chat_may_name(gateway: Gateway, settings: Settings) -> None:
    make_agent(settings)
    async with GatewayClient.connect(url_of(gateway)) as gw:
        listed = await gw.agents()
    assert [a["agentId"] for a in listed["agents"]] == ["default", "helper"]


async def test_a_prompt_answered_elsewhere_is_withdrawn(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings
) -> None:
    """An approval handler still deciding (a person at a prompt) is cancelled once the call is decided elsewhere."""
    make_agent(settings, '[tools.approval]\nread_skill = "ask"\n')
    call = tool_use("read_skill", {"name": "pdf"})
    fake.queue(tool_reply(call), Reply(text="read"))
    prompting, withdrawn = asyncio.Event(), asyncio.Event()

    async def never_decides(request: ApprovalRequest) -> Decision:
        prompting.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            withdrawn.set()
            raise
        return "deny"

    async with GatewayClient.connect(url_of(gateway)) as gw, GatewayClient.connect(url_of(gateway)) as other:
        reply = gw.chat("read it", agent_id="helper", on_approval=never_decides)
        reading = asyncio.ensure_future(reply.text())
        await prompting.wait()
        await other.approve(call["id"], "allow_once")
        assert await reading == "read"
        await withdrawn.wait()
    assert [r.status for r in reply.tool_results] == ["done"]
