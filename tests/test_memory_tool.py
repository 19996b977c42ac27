"""Anthropic's memory tool as the gateway runs it: `/memories` is `agents/<id>/memories/`, every command works, and
no path the model can name reaches anything outside that folder (`..`, absolute paths, NUL, symlinks, long and hidden
names), with the whole workspace byte-for-byte untouched after each attempt."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse

from gateway.settings import Settings
from gateway.tools.base import ToolFailure
from gateway.tools.memory import MAX_FILE_BYTES, VIEW_LINES, MemoryTool
from tests.conftest import chat
from tests.fake_anthropic import FakeAnthropic, Reply, tool_reply, tool_use


def tree(root: Path) -> dict[str, str]:
    """Every entry under root: a file's hash, a link's target, or 'dir'."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            found[key] = "-> " + os.readlink(path)
        elif path.is_dir():
            found[key] = "dir"
        else:
            found[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def agent(tmp_path: Path) -> Path:
    root = tmp_path / "agents" / "keeper"
    (root / "memories" / "notes").mkdir(parents=True)
    (root / "SYSTEM.md").write_text("system prompt, not memory")
    (root / "memories" / "notes" / "todo.md").write_text("- buy milk\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("do not touch")
    (root / "memories" / "escape").symlink_to(tmp_path / "outside")
    (root / "memories" / "up").symlink_to(root)
    return root


async def call(tool: MemoryTool, **args: Any) -> str:
    outcome = await tool.run(args)
    assert isinstance(outcome.content, str)
    return outcome.content


ATTACKS: list[dict[str, Any]] = [
    {"command": "view", "path": "/memories/../SYSTEM.md"},
    {"command": "view", "path": "/etc/passwd"},
    {"command": "view", "path": "/memoriesx/notes"},
    {"command": "view", "path": "memories/notes/todo.md"},
    {"command": "create", "path": "/memories/../../outside/new.txt", "file_text": "x"},
    {"command": "create", "path": "/memories/escape/new.txt", "file_text": "x"},
    {"command": "create", "path": "/memories/up/SYSTEM2.md", "file_text": "x"},
    {"command": "view", "path": "/memories/escape/secret.txt"},
    {"command": "view", "path": "/memories/up/SYSTEM.md"},
    {"command": "str_replace", "path": "/memories/up/SYSTEM.md", "old_str": "system", "new_str": "pwned"},
    {"command": "insert", "path": "/memories/escape/secret.txt", "insert_line": 0, "insert_text": "x"},
    {"command": "delete", "path": "/memories/escape/secret.txt"},
    {"command": "delete", "path": "/memories/up"},
    {"command": "delete", "path": "/memories"},
    {"command": "rename", "old_path": "/memories/notes/todo.md", "new_path": "/memories/escape/todo.md"},
    {"command": "rename", "old_path": "/memories/up", "new_path": "/memories/mine"},
    {"command": "create", "path": "/memories/a\x00b", "file_text": "x"},
    {"command": "create", "path": "/memories/line\nbreak", "file_text": "x"},
    {"command": "create", "path": "/memories/" + "n" * 300, "file_text": "x"},
    {"command": "create", "path": "/memories/" + "d/" * 600 + "f", "file_text": "x"},
    {"command": "create", "path": "/memories/.hidden", "file_text": "x"},
    {"command": "create", "path": "/memories/big.txt", "file_text": "x" * (MAX_FILE_BYTES + 1)},
    {"command": "create", "path": "/memories", "file_text": "x"},
    {"command": "explode", "path": "/memories"},
    {"command": "view", "path": 42},
]


@pytest.mark.parametrize(
    "attack", ATTACKS, ids=lambda a: f"{a['command']}:{str(a.get('path', a.get('old_path')))[:30]}"
)
async def test_every_path_out_is_refused_and_nothing_changes(agent: Path, attack: dict[str, Any]) -> None:
    everything = agent.parent.parent
    before = tree(everything)
    with pytest.raises(ToolFailure):
        await MemoryTool(agent, asyncio.Lock()).run(attack)
    assert tree(everything) == before


async def test_a_memories_folder_that_is_a_link_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "agents" / "linked"
    root.mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "memories").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ToolFailure, match="not a plain folder"):
        await MemoryTool(root, asyncio.Lock()).run({"command": "create", "path": "/memories/x", "file_text": "x"})
    assert list((tmp_path / "elsewhere").iterdir()) == []


async def test_commands_work_inside(agent: Path) -> None:
    tool = MemoryTool(agent, asyncio.Lock())
    assert await call(tool, command="create", path="/memories/prefs/coffee.md", file_text="- likes it black\n") == (
        "File created successfully at: /memories/prefs/coffee.md"
    )
    assert (agent / "memories" / "prefs" / "coffee.md").read_text() == "- likes it black\n"
    with pytest.raises(ToolFailure, match="already exists"):
        await tool.run({"command": "create", "path": "/memories/prefs/coffee.md", "file_text": "again"})
    edited = await call(
        tool, command="str_replace", path="/memories/prefs/coffee.md", old_str="black", new_str="with milk"
    )
    assert "with milk" in edited
    await call(tool, command="insert", path="/memories/prefs/coffee.md", insert_line=0, insert_text="# Coffee")
    assert (agent / "memories" / "prefs" / "coffee.md").read_text() == "# Coffee\n- likes it with milk\n"
    viewed = await call(tool, command="view", path="/memories/prefs/coffee.md")
    assert viewed.splitlines()[1:] == ["     1\t# Coffee", "     2\t- likes it with milk", "     3\t"]
    listing = await call(tool, command="view", path="/memories")
    assert "/memories/prefs/coffee.md" in listing and "/memories/notes/todo.md" in listing
    assert "escape" not in listing and "up" not in listing.split("excluding hidden items:")[1]  # links are not listed
    await call(tool, command="rename", old_path="/memories/prefs/coffee.md", new_path="/memories/drinks/coffee.md")
    assert (agent / "memories" / "drinks" / "coffee.md").exists()
    await call(tool, command="delete", path="/memories/drinks")
    assert not (agent / "memories" / "drinks").exists()
    assert (agent / "SYSTEM.md").read_text() == "system prompt, not memory"


async def test_long_files_are_viewed_a_page_at_a_time(agent: Path) -> None:
    tool = MemoryTool(agent, asyncio.Lock())
    lines = "\n".join(f"line {i}" for i in range(1, VIEW_LINES * 2 + 1))
    await call(tool, command="create", path="/memories/long.md", file_text=lines)
    first = await call(tool, command="view", path="/memories/long.md")
    assert f"line {VIEW_LINES}" in first and f"line {VIEW_LINES + 1}\n" not in first
    assert f"view_range [{VIEW_LINES + 1}, {VIEW_LINES * 2}]" in first
    second = await call(tool, command="view", path="/memories/long.md", view_range=[VIEW_LINES + 1, -1])
    assert f"line {VIEW_LINES * 2}" in second and "Showing lines" not in second


async def test_memory_through_the_loop(ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings) -> None:
    (settings.agents_dir / "keeper").mkdir(parents=True)
    create = tool_use("memory", {"command": "create", "path": "/memories/user.md", "file_text": "Name: Ada\n"})
    escape = tool_use("memory", {"command": "view", "path": "/memories/../agent.toml"})
    fake.queue(tool_reply(create, escape), Reply(text="Noted."))
    frames = await chat(ws, "I am Ada", agentId="keeper")
    results = {f["toolUseId"]: f for f in frames if f["type"] == "chat.tool.result"}
    assert results[create["id"]]["status"] == "done" and results[escape["id"]]["isError"] is True
    assert (settings.agents_dir / "keeper" / "memories" / "user.md").read_text() == "Name: Ada\n"
    call_frame = next(f for f in frames if f["type"] == "chat.tool.call")
    assert (call_frame["executor"], call_frame["policy"]) == ("builtin", "allow")
    assert fake.requests[0].body["tools"][0] == {"type": "memory_20250818", "name": "memory"}
