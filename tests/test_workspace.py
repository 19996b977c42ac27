"""Workspace loading against real files in tmp_path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.context.workspace import Skill, WorkspaceLoader, validate_agent_id
from gateway.context.workspace_files import (
    MAX_MEMORY_BYTES,
    MAX_SKILL_DESCRIPTION_CHARS,
    MAX_SKILLS,
    MAX_SYSTEM_BYTES,
    MAX_TOOLS,
    MAX_TOOLS_BYTES,
    parse_front_matter,
)
from gateway.errors import AgentNotFound, InvalidMessage
from gateway.settings import DEFAULT_SYSTEM_PROMPT


def write(path: Path, content: str | bytes, *, age_s: float = 60.0) -> None:
    """Write a file and date it in the past, so the loader's recent-change rule does not mask caching."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    stamp = os.stat(path).st_mtime - age_s
    os.utime(path, (stamp, stamp))


def tool(name: str) -> dict[str, object]:
    return {"name": name, "description": f"{name} tool", "input_schema": {"type": "object", "properties": {}}}


@pytest.fixture
def agents(tmp_path: Path) -> Path:
    return tmp_path / "agents"


@pytest.fixture
def loader(agents: Path) -> WorkspaceLoader:
    return WorkspaceLoader(agents)


def test_default_agent_without_folder(loader: WorkspaceLoader) -> None:
    ws = loader.load("default")
    assert ws.agent_id == "default"
    assert ws.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert (ws.memory, ws.skills, ws.tools, ws.problems) == ("", (), (), ())
    assert (ws.model, ws.cache_mode, ws.max_tokens) == (None, "5m", None)
    assert not (ws.system_truncated or ws.memory_truncated or ws.skills_truncated or ws.tools_truncated)
    assert loader.exists("default")
    assert loader.list_agents() == ["default"]


def test_missing_named_agent(loader: WorkspaceLoader) -> None:
    with pytest.raises(AgentNotFound):
        loader.load("nobody")
    assert not loader.exists("nobody")


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "a" * 65, "a\x00b", "..", "a..b", ".hidden", "ok\n", "a\\b"])
def test_bad_ids_rejected(loader: WorkspaceLoader, bad: str) -> None:
    with pytest.raises(InvalidMessage):
        validate_agent_id(bad)
    with pytest.raises(InvalidMessage):
        loader.load(bad)


def test_good_ids_accepted() -> None:
    for good in ("a", "A-b_c.d", "x" * 64, "0agent"):
        assert validate_agent_id(good) == good


def test_list_agents(agents: Path, loader: WorkspaceLoader) -> None:
    (agents / "writer").mkdir(parents=True)
    (agents / "bad name").mkdir()
    write(agents / "notes.txt", "not an agent")
    assert loader.list_agents() == ["default", "writer"]


def test_system_and_memory_loaded(agents: Path, loader: WorkspaceLoader) -> None:
    write(agents / "writer" / "SYSTEM.md", "\ufeffYou write poems.\n")
    write(agents / "writer" / "MEMORY.md", "The user likes haiku.\n")
    ws = loader.load("writer")
    assert ws.system_prompt == "You write poems."
    assert ws.memory == "The user likes haiku."


def test_empty_system_md_falls_back_to_default(agents: Path, loader: WorkspaceLoader) -> None:
    write(agents / "writer" / "SYSTEM.md", "  \n")
    assert loader.load("writer").system_prompt == DEFAULT_SYSTEM_PROMPT


def test_invalid_utf8_is_replaced(agents: Path, loader: WorkspaceLoader) -> None:
    write(agents / "writer" / "SYSTEM.md", b"caf\xff")
    assert loader.load("writer").system_prompt == "caf\ufffd"


def test_changed_file_is_reread_and_unchanged_is_not(agents: Path, loader: WorkspaceLoader) -> None:
    path = agents / "writer" / "SYSTEM.md"
    write(path, "first")
    assert loader.load("writer").system_prompt == "first"
    reads = loader.file_reads
    assert loader.load("writer").system_prompt == "first"
    assert loader.file_reads == reads  # nothing changed: served from cache
    write(path, "second", age_s=30.0)
    assert loader.load("writer").system_prompt == "second"
    path.unlink()
    assert loader.load("writer").system_prompt == DEFAULT_SYSTEM_PROMPT


def test_same_size_rewrite_seen_while_recent(agents: Path, loader: WorkspaceLoader) -> None:
    # Same size and, on coarse filesystems, possibly the same mtime: the recent-change rule must catch it.
    path = agents / "writer" / "SYSTEM.md"
    write(path, "aaaa", age_s=0)
    assert loader.load("writer").system_prompt == "aaaa"
    stat = os.stat(path)
    path.write_text("bbbb", encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert loader.load("writer").system_prompt == "bbbb"


def test_skills_index_and_hot_reload(agents: Path, loader: WorkspaceLoader) -> None:
    skills = agents / "writer" / "skills"
    write(skills / "zeta" / "SKILL.md", "---\nname: alpha\ndescription: First by name\n---\nBody\n")
    write(skills / "beta" / "SKILL.md", "# no front matter\n")
    (skills / "scratch").mkdir()  # no SKILL.md: not a skill
    assert loader.load("writer").skills == (Skill("alpha", "First by name"), Skill("beta", ""))
    write(skills / "gamma" / "SKILL.md", "---\nname: gamma\ndescription: New\n---\n")
    assert [s.name for s in loader.load("writer").skills] == ["alpha", "beta", "gamma"]
    (skills / "beta" / "SKILL.md").unlink()
    assert [s.name for s in loader.load("writer").skills] == ["alpha", "gamma"]


def test_front_matter_quotes_and_continuations() -> None:
    text = (
        "---\n"
        'name: "pdf: tools"\n'
        "description: 'It''s for PDFs' \n"
        "# a comment\n"
        "other: plain value # trailing comment\n"
        "folded: >\n"
        "  line one\n"
        "  line two\n"
        'escaped: "tab\\tand \\"quote\\""\n'
        "---\n"
        "name: not this\n"
    )
    assert parse_front_matter(text) == {
        "name": "pdf: tools",
        "description": "It's for PDFs",
        "other": "plain value",
        "folded": "line one line two",
        "escaped": 'tab\tand "quote"',
    }
    assert parse_front_matter("---\nname: unclosed\n") == {}
    assert parse_front_matter("name: x\n---\n") == {}


def test_skill_limits(agents: Path, loader: WorkspaceLoader) -> None:
    skills = agents / "writer" / "skills"
    long = "d" * (MAX_SKILL_DESCRIPTION_CHARS + 10)
    write(skills / "long" / "SKILL.md", f"---\nname: long\ndescription: {long}\n---\n")
    ws = loader.load("writer")
    assert ws.skills[0].description == "d" * MAX_SKILL_DESCRIPTION_CHARS
    assert ws.skills_truncated and any("long" in p for p in ws.problems)
    for i in range(MAX_SKILLS + 5):
        write(skills / f"s{i:03d}" / "SKILL.md", f"---\nname: s{i:03d}\n---\n")
    ws = loader.load("writer")
    assert len(ws.skills) == MAX_SKILLS and ws.skills_truncated


def test_duplicate_skill_name_reported(agents: Path, loader: WorkspaceLoader) -> None:
    skills = agents / "writer" / "skills"
    write(skills / "a" / "SKILL.md", "---\nname: same\ndescription: from a\n---\n")
    write(skills / "b" / "SKILL.md", "---\nname: same\ndescription: from b\n---\n")
    ws = loader.load("writer")
    assert ws.skills == (Skill("same", "from a"),)
    assert any("duplicate" in p for p in ws.problems)


@pytest.mark.parametrize(("name", "limit"), [("SYSTEM.md", MAX_SYSTEM_BYTES), ("MEMORY.md", MAX_MEMORY_BYTES)])
def test_truncation_keeps_valid_utf8(agents: Path, loader: WorkspaceLoader, name: str, limit: int) -> None:
    # "é" is two bytes; placing it across the limit forces a cut in the middle of a character.
    content = "a" * (limit - 1) + "é" + "tail"
    write(agents / "writer" / name, content)
    ws = loader.load("writer")
    text, truncated = (
        (ws.system_prompt, ws.system_truncated) if name == "SYSTEM.md" else (ws.memory, ws.memory_truncated)
    )
    assert truncated
    assert text == "a" * (limit - 1)
    assert "\ufffd" not in text and len(text.encode("utf-8")) <= limit
    assert any(p.startswith(name) for p in ws.problems)


def test_exactly_at_limit_is_not_truncated(agents: Path, loader: WorkspaceLoader) -> None:
    write(agents / "writer" / "SYSTEM.md", "a" * MAX_SYSTEM_BYTES)
    ws = loader.load("writer")
    assert not ws.system_truncated and len(ws.system_prompt) == MAX_SYSTEM_BYTES


def test_tools_valid(agents: Path, loader: WorkspaceLoader) -> None:
    write(agents / "writer" / "tools.json", json.dumps([tool("search"), tool("fetch")]))
    ws = loader.load("writer")
    assert [t["name"] for t in ws.tools] == ["search", "fetch"]
    assert ws.tools[0]["input_schema"] == {"type": "object", "properties": {}}
    assert not ws.tools_truncated and ws.problems == ()
    ws.tools[0]["cache_control"] = {"type": "ephemeral"}  # callers may decorate their copy
    assert "cache_control" not in loader.load("writer").tools[0]


def test_tools_invalid_json(agents: Path, loader: WorkspaceLoader) -> None:
    write(agents / "writer" / "tools.json", '[\n  {"name": "a"}\n  {"name": "b"}\n]')
    ws = loader.load("writer")
    assert ws.tools == ()
    assert len(ws.problems) == 1 and ws.problems[0].startswith("tools.json: line 3: Expecting ','")


def test_tools_wrong_shape(agents: Path, loader: WorkspaceLoader) -> None:
    write(agents / "writer" / "tools.json", '{"name": "a"}')
    ws = loader.load("writer")
    assert ws.tools == () and "list" in ws.problems[0]
    bad = [tool("ok"), {"name": "no schema"}, tool("ok"), "x", {**tool("s"), "input_schema": {"type": "string"}}]
    write(agents / "writer" / "tools.json", json.dumps(bad), age_s=30.0)
    ws = loader.load("writer")
    assert [t["name"] for t in ws.tools] == ["ok"]
    assert [p.split(":")[1].strip() for p in ws.problems] == ["tool 1", "tool 2", "tool 3", "tool 4"]


def test_too_many_tools_truncated(agents: Path, loader: WorkspaceLoader) -> None:
    write(agents / "writer" / "tools.json", json.dumps([tool(f"t{i}") for i in range(MAX_TOOLS + 3)]))
    ws = loader.load("writer")
    assert len(ws.tools) == MAX_TOOLS and ws.tools_truncated
    assert ws.tools[-1]["name"] == f"t{MAX_TOOLS - 1}"


def test_oversized_tools_file(agents: Path, loader: WorkspaceLoader) -> None:
    padding = "x" * MAX_TOOLS_BYTES
    write(agents / "writer" / "tools.json", json.dumps([{**tool("big"), "description": padding}]))
    ws = loader.load("writer")
    assert ws.tools == () and ws.tools_truncated and "larger than" in ws.problems[0]


def test_agent_toml(agents: Path, loader: WorkspaceLoader) -> None:
    path = agents / "writer" / "agent.toml"
    write(path, 'model = "claude-opus-4-1"\ncache = "1h"\nmax_tokens = 2048\n')
    ws = loader.load("writer")
    assert (ws.model, ws.cache_mode, ws.max_tokens, ws.problems) == ("claude-opus-4-1", "1h", 2048, ())
    write(path, 'cache = "off"\n', age_s=30.0)
    assert loader.load("writer").cache_mode == "off"


def test_agent_toml_invalid_values_default(agents: Path, loader: WorkspaceLoader) -> None:
    path = agents / "writer" / "agent.toml"
    write(path, 'model = ""\ncache = "10m"\nmax_tokens = true\ncach = "1h"\n')
    ws = loader.load("writer")
    assert (ws.model, ws.cache_mode, ws.max_tokens) == (None, "5m", None)
    assert len(ws.problems) == 4
    write(path, "cache = \n", age_s=30.0)
    ws = loader.load("writer")
    assert ws.cache_mode == "5m" and ws.problems[0].startswith("agent.toml:")


def test_unreadable_entry_is_a_problem(agents: Path, loader: WorkspaceLoader) -> None:
    (agents / "writer" / "SYSTEM.md").mkdir(parents=True)  # a folder where a file belongs
    ws = loader.load("writer")
    assert ws.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert ws.problems and ws.problems[0].startswith("SYSTEM.md: refused: is a directory")
