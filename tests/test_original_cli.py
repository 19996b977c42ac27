"""The original AgentSpace CLI (TypeScript, github.com/HiTek-Dev/AgentSpace at its "gateway core" and "CLI" phases,
commit bd65326) against this gateway, frame for frame.

Its `lib/gateway-client.ts` builds the frames it sends; its `hooks/useChat.ts` dispatches every answer on `type` and
reads the fields listed in READS (a missing one shows `NaN`, or throws in `toFixed` / `toLocaleString`). Its
protocol (`gateway/src/ws/protocol.ts`) named the request in each answer `requestId`. It sends no token (its gateway
was loopback-only) and ids from nanoid (21 URL-safe characters).
"""

from __future__ import annotations

from typing import Any

from aiohttp import ClientWebSocketResponse

from tests.conftest import collect, recv, send
from tests.fake_anthropic import FakeAnthropic, Reply

# Its `useChat` starts with claude-sonnet-4-5-20250929 (retiring, so the SDK warns) unless given --model; a user today
# passes a current one, which every chat.send then carries.
MODEL = "claude-sonnet-5-5"

# type -> the paths it reads ("[]" walks a list, "{}" every value of an object), and the JSON type each must have.
READS: dict[str, list[tuple[str, type | tuple[type, ...]]]] = {
    "session.created": [("sessionId", str)],
    "chat.stream.start": [("model", str)],
    "chat.stream.delta": [("delta", str)],
    "chat.stream.end": [("usage.totalTokens", int), ("cost.totalCost", (int, float))],
    "error": [("message", str)],
    "session.list": [
        ("sessions[].sessionId", str),
        ("sessions[].model", str),
        ("sessions[].messageCount", int),
        ("sessions[].createdAt", str),
    ],
    "context.inspection": [
        ("sections[].name", str),
        ("sections[].byteCount", int),
        ("sections[].tokenEstimate", int),
        ("sections[].costEstimate", (int, float)),
        ("totals.byteCount", int),
        ("totals.tokenEstimate", int),
        ("totals.costEstimate", (int, float)),
    ],
    "usage.report": [
        ("perModel{}.totalTokens", int),
        ("perModel{}.totalCost", (int, float)),
        ("perModel{}.requestCount", int),
        ("grandTotal.totalTokens", int),
        ("grandTotal.totalCost", (int, float)),
        ("grandTotal.requestCount", int),
    ],
}


def values_at(frame: Any, path: str) -> list[Any]:
    found = [frame]
    for part in path.split("."):
        step: list[Any] = []
        for value in found:
            name = part.rstrip("[]{}")
            assert isinstance(value, dict) and name in value, f"missing {part} in {path}"
            inner = value[name]
            if part.endswith("[]"):
                step.extend(inner)
            elif part.endswith("{}"):
                step.extend(inner.values())
            else:
                step.append(inner)
        found = step
    return found


def check_reads(frame: dict[str, Any], request_id: str) -> None:
    """What the original CLI would read of this answer is there, with the type its code assumes. Types it has no case
    for (chat.stream.thinking) fall through its switch untouched."""
    for path, kind in READS.get(frame["type"], []):
        for value in values_at(frame, path):
            assert isinstance(value, kind) and not isinstance(value, bool), (frame["type"], path, value)
    assert frame["requestId"] == frame["id"] == request_id


async def ask(ws: ClientWebSocketResponse, frame: dict[str, Any]) -> list[dict[str, Any]]:
    await send(ws, frame)
    if frame["type"] == "chat.send":
        answers = await collect(ws)
    else:
        answers = [await recv(ws)]
    for answer in answers:
        check_reads(answer, frame["id"])
    return answers


async def test_every_answer_has_what_the_original_cli_reads(ws: ClientWebSocketResponse, fake: FakeAnthropic) -> None:
    fake.queue(Reply(text="WAL mode keeps a log.", cache_read=40, cache_creation_5m=12))
    # createChatSendMessage(content, {model}) for a new chat, then with the session it learned from session.created.
    first = await ask(ws, {"type": "chat.send", "id": "V1StGXR8_Z5jdHi6B-myT", "content": "What is WAL mode?",
                           "model": MODEL})  # fmt: skip
    assert [f["type"] for f in first][:2] == ["session.created", "chat.stream.start"]
    assert first[-1]["type"] == "chat.stream.end"
    end = first[-1]
    usage = end["usage"]
    assert usage["totalTokens"] == (
        usage["inputTokens"] + usage["outputTokens"] + usage["cacheCreationInputTokens"] + usage["cacheReadInputTokens"]
    )
    session_id = first[0]["sessionId"]
    again = await ask(ws, {"type": "chat.send", "id": "3g0H_wLPaZcWgjB1j5xvb", "content": "And its downsides?",
                           "sessionId": session_id, "model": MODEL})  # fmt: skip
    assert again[0]["type"] == "chat.stream.start" and again[-1]["type"] == "chat.stream.end"
    # /session list, /context, /usage (of this session, and of everything).
    (listed,) = await ask(ws, {"type": "session.list", "id": "Uakgb_J5m9g-0JDMbcJqL"})
    assert listed["type"] == "session.list" and listed["sessions"][0]["sessionId"] == session_id
    (inspection,) = await ask(ws, {"type": "context.inspect", "id": "d8fKq2nQ0bW7cS1xLr4Tz", "sessionId": session_id})
    assert inspection["model"] == MODEL  # the session's, as the original priced it
    (mine,) = await ask(ws, {"type": "usage.query", "id": "kP3mZ8vR2qL5wN9tY6xBc", "sessionId": session_id})
    (everything,) = await ask(ws, {"type": "usage.query", "id": "hJ7nW4eT1yU6iO0pA3sDf"})
    assert mine["grandTotal"]["requestCount"] == everything["grandTotal"]["requestCount"] == 2
    assert mine["grandTotal"]["totalTokens"] == sum(m["totalTokens"] for m in mine["perModel"].values())
    # An error answer: a session that does not exist (its /context on a stale id).
    (error,) = await ask(ws, {"type": "context.inspect", "id": "Q1w2E3r4T5y6U7i8O9p0A", "sessionId": "gone"})
    assert error["type"] == "error" and error["code"] == "SESSION_NOT_FOUND"


async def test_a_session_keeps_its_model_and_inspection_prices_with_it(
    ws: ClientWebSocketResponse, fake: FakeAnthropic
) -> None:
    """After `agentspace chat --model X`, the session is X's: inspecting it (and sending into it) without a model
    uses X, and the inspection says so."""
    frames = await ask(ws, {"type": "chat.send", "id": "a", "content": "hi", "model": "claude-opus-5-5"})
    session_id = frames[0]["sessionId"]
    (inspection,) = await ask(ws, {"type": "context.inspect", "id": "b", "sessionId": session_id})
    assert (inspection["model"], inspection["modelSource"]) == ("claude-opus-5-5", "session")
    opus_cost = inspection["totals"]["costEstimate"]
    asked = await ask(ws, {"type": "context.inspect", "id": "c", "sessionId": session_id, "model": "claude-haiku-5-5"})
    assert (asked[0]["model"], asked[0]["modelSource"]) == ("claude-haiku-5-5", "request")
    assert asked[0]["totals"]["costEstimate"] < opus_cost
    await ask(ws, {"type": "chat.send", "id": "d", "content": "more", "sessionId": session_id})
    assert (await fake.wait_for_request(2)).body["model"] == "claude-opus-5-5"
    (report,) = await ask(ws, {"type": "usage.query", "id": "e", "groupBy": "day"})
    (day,) = report["groups"]
    assert day["totalTokens"] == report["grandTotal"]["totalTokens"] > 0
