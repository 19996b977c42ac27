"""`agent.list`: the agents a client may start a chat with (the Control UI's agent picker reads it)."""

from __future__ import annotations

import os

from aiohttp import ClientWebSocketResponse

from gateway.settings import Settings
from tests.conftest import request


async def test_lists_default_and_every_agent_folder_with_its_model(
    ws: ClientWebSocketResponse, settings: Settings
) -> None:
    empty = await request(ws, {"type": "agent.list", "id": "a0"})
    assert (empty["type"], empty["id"], empty["truncated"]) == ("agent.list", "a0", False)
    assert empty["agents"] == [
        {
            "agentId": "default",
            "model": settings.default_model,
            "modelSource": "default",
            "skillCount": 0,
            "mcpServerCount": 0,
            "problemCount": 0,
        }
    ]

    writer = settings.agents_dir / "writer"
    (writer / "skills" / "pdf").mkdir(parents=True)
    (writer / "skills" / "pdf" / "SKILL.md").write_text("---\nname: pdf\ndescription: PDFs.\n---\nbody")
    (writer / "agent.toml").write_text('model = "claude-opus-5-5"\n[mcp.fs]\ncommand = "true"\n')
    (settings.agents_dir / "broken").mkdir()
    (settings.agents_dir / "broken" / "agent.toml").write_text("model = [not toml")
    (settings.agents_dir / "not an id").mkdir()  # folders whose names are not ids are not agents
    os.symlink("/nonexistent", settings.agents_dir / "dangling")

    listed = await request(ws, {"type": "agent.list", "id": "a1"})
    by_id = {a["agentId"]: a for a in listed["agents"]}
    assert list(by_id) == ["broken", "default", "writer"]
    assert by_id["writer"] == {
        "agentId": "writer",
        "model": "claude-opus-5-5",
        "modelSource": "agent",
        "skillCount": 1,
        "mcpServerCount": 1,
        "problemCount": 0,
    }
    assert by_id["broken"]["problemCount"] == 1 and by_id["broken"]["model"] == settings.default_model
