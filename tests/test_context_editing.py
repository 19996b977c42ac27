"""Context editing: old tool results and old thinking left out of what is sent (placeholders say what), pairing
intact, batches that keep the prompt cache, and the inspector showing exactly what was cleared and saved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import ClientWebSocketResponse

from gateway.settings import Settings
from tests.conftest import chat, request
from tests.fake_anthropic import FakeAnthropic, Reply, tool_reply, tool_use
from tests.sql import sql_rows

SKILL_BODY = "# PDF skill\n\n" + "Use pdftotext first, then check every page by hand. " * 40


def make_agent(settings: Settings, context: str) -> str:
    root = settings.agents_dir / "reader"
    (root / "skills" / "pdf").mkdir(parents=True)
    (root / "skills" / "pdf" / "SKILL.md").write_text(f"---\nname: pdf\ndescription: Read PDFs.\n---\n\n{SKILL_BODY}\n")
    (root / "agent.toml").write_text(f"[context]\n{context}")
    return "reader"


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def results(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for m in body["messages"] for b in m["content"] if b.get("type") == "tool_result"]


def thinking_turns(body: dict[str, Any]) -> list[bool]:
    """Per assistant turn sent: whether it still has its thinking."""
    return [any(b["type"] == "thinking" for b in m["content"]) for m in body["messages"] if m["role"] == "assistant"]


async def tool_turn(ws: ClientWebSocketResponse, fake: FakeAnthropic, text: str, **fields: Any) -> str:
    """One turn in which the model reads the skill, then answers."""
    fake.queue(tool_reply(tool_use("read_skill", {"name": "pdf"})), Reply(text=f"Answer to {text}"))
    frames = await chat(ws, text, **fields)
    assert frames[-1]["type"] == "chat.stream.end", frames[-1]
    return str(frames[-1]["sessionId"])


async def test_old_tool_results_are_cleared_in_batches(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    agent = make_agent(settings, "clear_tool_results = true\nkeep_tool_uses = 1\nclear_batch = 2\n")
    session_id = await tool_turn(ws, fake, "Question 1", agentId=agent)
    for n in range(2, 5):
        await tool_turn(ws, fake, f"Question {n}", sessionId=session_id)
    # Every request was valid for the strict upstream: each tool_use kept its tool_result.
    assert fake.refusals == []

    # Turn 5's first request: 4 earlier calls, 1 kept, cleared 2 at a time -> the 2 oldest are placeholders.
    draft = "Question 5"
    frame = await request(ws, {"type": "context.inspect", "sessionId": session_id, "content": draft})
    await tool_turn(ws, fake, draft, sessionId=session_id)
    first = next(r.body for r in fake.requests if r.body["messages"][-1]["content"][-1].get("text") == draft)
    sent = results(first)
    assert len(sent) == 4
    for block in sent[:2]:
        assert block["content"].startswith("[Cleared by the gateway to save context: this read_skill result (")
        assert "Call the tool again if you need it." in block["content"]
    assert [b["content"] for b in sent[2:]] == [SKILL_BODY.strip()] * 2
    # The inspector showed exactly that request, and what it left out.
    history = next(s for s in frame["sections"] if s["name"] == "history")
    assert history["content"] == first["messages"]
    assert history["byteCount"] == len(compact(first["messages"]))
    editing = frame["contextEditing"]
    assert (editing["clearToolResults"], editing["keepToolUses"], editing["clearBatch"]) == (True, 1, 2)
    assert (editing["clearedToolResults"], editing["clearedThinking"]) == (2, 0)
    assert [c["name"] for c in editing["cleared"]] == ["read_skill", "read_skill"]
    assert [c["toolUseId"] for c in editing["cleared"]] == [b["tool_use_id"] for b in sent[:2]]
    stored = await sql_rows(settings.db_url, "SELECT result FROM tool_calls ORDER BY created_at")
    # SQL keeps every result as it was.
    assert len(stored) == 5 and all(str(r["result"]).count("check every page by hand") == 40 for r in stored)
    saved = sum(c["byteCount"] for c in editing["cleared"]) - sum(len(compact(b)) for b in sent[:2])
    assert editing["savedBytes"] == saved > 2000
    assert editing["savedTokens"] > 0 and editing["savedCost"] > 0

    # The request after it (the same turn's second step) clears no more: the batch has not filled yet, so its
    # prefix is the one just cached.
    second = fake.requests[-1].body
    assert [b["content"] for b in results(second)][:2] == [b["content"] for b in sent[:2]]
    assert results(second)[2]["content"] == SKILL_BODY.strip()


async def test_old_thinking_is_dropped_but_a_running_loop_keeps_its_own(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    agent = make_agent(settings, "clear_thinking = true\nkeep_thinking_turns = 1\nclear_batch = 2\n")
    session_id = await tool_turn(ws, fake, "Question 1", agentId=agent)
    await tool_turn(ws, fake, "Question 2", sessionId=session_id)
    await tool_turn(ws, fake, "Question 3", sessionId=session_id)
    assert fake.refusals == []
    # Turn 3's second step: turns 1 and 2 had 4 replies with thinking, 1 kept, 2 at a time -> 2 cleared (the oldest);
    # the running turn's own reply (with its tool call) keeps its thinking.
    body = fake.requests[-1].body
    assert thinking_turns(body) == [False, False, True, True, True]
    frame = await request(ws, {"type": "context.inspect", "sessionId": session_id, "content": "Question 4"})
    editing = frame["contextEditing"]
    assert editing["clearedThinking"] == 4 and editing["clearedToolResults"] == 0
    assert {c["kind"] for c in editing["cleared"]} == {"thinking"}
    assert editing["savedTokens"] > 0


async def test_editing_is_off_by_default(ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings) -> None:
    root = settings.agents_dir / "plain"
    (root / "skills" / "pdf").mkdir(parents=True)
    (root / "skills" / "pdf" / "SKILL.md").write_text(f"---\nname: pdf\n---\n\n{SKILL_BODY}\n")
    session_id = await tool_turn(ws, fake, "Question 1", agentId="plain")
    for n in range(2, 6):
        await tool_turn(ws, fake, f"Question {n}", sessionId=session_id)
    assert all(b["content"] == SKILL_BODY.strip() for b in results(fake.requests[-1].body))
    frame = await request(ws, {"type": "context.inspect", "sessionId": session_id})
    editing = frame["contextEditing"]
    assert (editing["clearToolResults"], editing["clearedToolResults"], editing["savedBytes"]) == (False, 0, 0)


def test_agent_toml_context_problems(tmp_path: Path) -> None:
    from gateway.context.workspace import WorkspaceLoader

    root = tmp_path / "agents" / "odd"
    root.mkdir(parents=True)
    (root / "agent.toml").write_text(
        "[context]\nwindow = 10\ncompact_at = 2\nkeep_turns = -1\nclear_thinking = 'yes'\n"
        "compact_at_usd = 0.0000000001\ncompact_at_tokens = 5000\nwindoww = 1\n"
    )
    workspace = WorkspaceLoader(tmp_path / "agents").load("odd")
    config = workspace.context
    assert (config.window, config.compact_at, config.keep_turns, config.clear_thinking) == (None, 0.8, 2, False)
    assert config.compact_at_tokens == 5000 and config.compact_at_nano_usd is None
    problems = "\n".join(workspace.problems)
    for key in ("window", "compact_at", "keep_turns", "clear_thinking", "compact_at_usd", "'windoww'"):
        assert f"agent.toml: [context] {key}" in problems or f"unknown key {key}" in problems, key
