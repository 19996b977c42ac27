"""Prompt caching: where the breakpoints go in the request Anthropic receives, per agent cache mode, and what it saved.

Sonnet 5.5 rates in nano-USD per token: input 2000, output 10000, 5m write 2500, 1h write 4000, read 100.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import ClientWebSocketResponse

from gateway.context.assembly import assemble
from gateway.context.workspace import WorkspaceLoader
from gateway.settings import Settings
from gateway.store import HistoryItem
from tests.conftest import chat, request
from tests.fake_anthropic import FakeAnthropic, Reply

EPHEMERAL = {"type": "ephemeral"}
ONE_HOUR = {"type": "ephemeral", "ttl": "1h"}


def make_agent(settings: Settings, name: str, cache: str | None, *, memory: str = "", tools: bool = False) -> None:
    root = settings.agents_dir / name
    root.mkdir(parents=True)
    (root / "SYSTEM.md").write_text(f"You are {name}.")
    if memory:
        (root / "MEMORY.md").write_text(memory)
    if cache is not None:
        (root / "agent.toml").write_text(f'cache = "{cache}"\n')
    if tools:
        tool = {"name": "lookup", "description": "Look a word up.", "input_schema": {"type": "object"}}
        (root / "tools.json").write_text(json.dumps([tool]))


def markers(body: dict[str, Any]) -> list[tuple[str, Any]]:
    """Every cache_control in the request as (where, marker), in prompt order: tools, system, messages."""
    found: list[tuple[str, Any]] = []
    for i, tool in enumerate(body.get("tools") or []):
        if "cache_control" in tool:
            found.append((f"tools[{i}]", tool["cache_control"]))
    for i, block in enumerate(body["system"]):
        if "cache_control" in block:
            found.append((f"system[{i}]", block["cache_control"]))
    for m, message in enumerate(body["messages"]):
        for b, block in enumerate(message["content"]):
            if "cache_control" in block:
                found.append((f"messages[{m}].{block['type']}[{b}]", block["cache_control"]))
    return found


async def test_default_agent_marks_system_and_history_prefix(ws: ClientWebSocketResponse, fake: FakeAnthropic) -> None:
    session_id = (await chat(ws, "first"))[0]["sessionId"]
    first = fake.requests[-1].body
    # One turn: only the system prompt is a stable prefix.
    assert markers(first) == [("system[0]", EPHEMERAL)]
    await chat(ws, "second", sessionId=session_id)
    await chat(ws, "third", sessionId=session_id)
    third = fake.requests[-1].body
    # The breakpoint sits on the last block before the newest user turn (the previous reply's text, never its
    # thinking); the newest user turn itself is not marked.
    assert [m["role"] for m in third["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert third["messages"][3]["content"][0]["type"] == "thinking"
    assert markers(third) == [("system[0]", EPHEMERAL), ("messages[3].text[1]", EPHEMERAL)]


async def test_one_hour_agent_marks_with_ttl_and_covers_memory_and_tools(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings, "archivist", "1h", memory="The user likes tea.", tools=True)
    session_id = (await chat(ws, "hello", agentId="archivist"))[0]["sessionId"]
    await chat(ws, "again", sessionId=session_id)
    body = fake.requests[-1].body
    # Tools come first in the prompt, so the system breakpoint (after memory) caches tools, system and memory.
    assert [b["text"] for b in body["system"]][-1].endswith("The user likes tea.")
    assert [t["name"] for t in body["tools"]] == ["memory", "lookup"]  # the built-in memory tool, then tools.json
    assert markers(body) == [("system[1]", ONE_HOUR), ("messages[1].text[1]", ONE_HOUR)]


async def test_cache_off_sends_no_breakpoints(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings, "plain", "off")
    session_id = (await chat(ws, "hello", agentId="plain"))[0]["sessionId"]
    await chat(ws, "again", sessionId=session_id)
    assert "cache_control" not in json.dumps(fake.requests[-1].body)
    inspection = await request(ws, {"type": "context.inspect", "sessionId": session_id})
    assert inspection["cacheMode"] == "off"


def test_breakpoint_skips_blocks_that_cannot_carry_one(tmp_path: Path) -> None:
    """A reply stored with only thinking (or an empty text block) cannot be marked; the marker moves back."""
    workspace = WorkspaceLoader(tmp_path / "agents").load("default")

    def msg(seq: int, role: str, content: list[dict[str, Any]]) -> HistoryItem:
        return HistoryItem(id=str(seq), role=role, content=content, version="1")

    history = [
        msg(0, "user", [{"type": "text", "text": "think hard"}]),
        msg(
            1, "assistant", [{"type": "thinking", "thinking": "hmm", "signature": "sig"}, {"type": "text", "text": ""}]
        ),
    ]
    assembled = assemble(workspace, history, pending="and?", model="claude-sonnet-5-5", max_tokens=100)
    turns = assembled.params["messages"]
    assert "cache_control" not in json.dumps(turns[1])
    assert turns[0]["content"][-1]["cache_control"] == EPHEMERAL


async def test_saved_cost_in_end_frames_and_report(ws: ClientWebSocketResponse, fake: FakeAnthropic) -> None:
    fake.queue(
        # First turn writes the prefix: 50x2000 + 3000x2500 + 100x10000 = 8,600,000 nano; uncached it would have
        # been 3050x2000 + 1,000,000 = 7,100,000, so the write has not paid for itself yet: saved -1,500,000.
        Reply(input_tokens=50, cache_creation_5m=3000, output_tokens=100),
        # Second turn reads it: 60x2000 + 3000x100 + 200x2500 + 80x10000 = 1,720,000; uncached 3260x2000 + 800,000
        # = 7,320,000; saved 5,600,000.
        Reply(input_tokens=60, cache_read=3000, cache_creation_5m=200, output_tokens=80),
    )
    first = (await chat(ws, "a long document ..."))[-1]
    second = (await chat(ws, "a question about it", sessionId=first["sessionId"]))[-1]
    assert (first["cost"]["totalCost"], first["cost"]["savedCost"]) == (0.0086, -0.0015)
    assert (second["cost"]["totalCost"], second["cost"]["savedCost"]) == (0.00172, 0.0056)
    report = await request(ws, {"type": "usage.query", "sessionId": first["sessionId"]})
    total = report["grandTotal"]
    assert (total["totalCostNanoUsd"], total["totalCost"], total["savedCost"]) == (10_320_000, 0.01032, 0.0041)
    assert (total["cacheCreation5mInputTokens"], total["cacheReadInputTokens"]) == (3200, 3000)
