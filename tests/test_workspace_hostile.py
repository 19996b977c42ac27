"""Hostile workspace files: every parser turns any bytes (deep nesting, huge numbers, bad types, bad UTF-8) into
defaults plus listed problems, never an exception, and what it returns can be sent upstream and reported."""

from __future__ import annotations

import asyncio
import json
import math
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.billing.accounting import nano_to_usd
from gateway.billing.budget_config import budget_of_unreadable
from gateway.context.workspace import WorkspaceLoader
from gateway.context.workspace_files import (
    MAX_NESTING,
    MAX_PROBLEMS_PER_FILE,
    MAX_TOKENS_CAP,
    AgentConfig,
    SkillFile,
    TextFile,
    ToolsFile,
    parse_agent_toml,
    parse_skill,
    parse_text,
    parse_tools,
    too_deep,
)
from gateway.protocol import dump

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces that have broken parsers before: deep brackets, numbers past Python's 4,300-digit limit, NaN, invalid UTF-8.
_HOSTILE_PIECES = st.sampled_from(
    [
        b"[" * 5000,
        b"]" * 5000,
        b"{" * 3000,
        b'{"a":' * 3000,
        b"a = " + b"[" * 3000,
        b"x = {y = " * 1000,
        b"9" * 5000,
        b"1e400",
        b"-1e400",
        b"NaN",
        b"Infinity",
        b"\xff\xfe\xc3\x28",
        b"\xed\xa0\x80",  # an encoded lone surrogate
        b"\x00",
        "\ufeff".encode(),
        b"---\n",
        b"name: ",
        b"description: ",
        b'"\\ud800"',
        b"[budget]\n",
        b"daily_usd = ",
        b"max_tokens = ",
        b"model = ",
        b"cache = ",
        b'"5m"',
        b"true",
        b"\n",
        b"  ",
        b'[{"name":"t","input_schema":{"type":"object"}}]',
    ]
)
HOSTILE_BYTES = st.one_of(
    st.binary(max_size=2048),
    st.lists(st.one_of(_HOSTILE_PIECES, st.binary(max_size=16)), max_size=12).map(b"".join),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


def _sendable(value: Any) -> None:
    """What reaches the model and the inspector must serialize as strict JSON."""
    json.loads(dump({"value": value}))


@FAST
@given(HOSTILE_BYTES, st.booleans())
def test_text_and_skill_files_never_raise(data: bytes, cut: bool) -> None:
    text = parse_text(data, cut)
    assert isinstance(text, TextFile) and isinstance(text.text, str)
    text.text.encode("utf-8")  # bad bytes became U+FFFD, never a lone surrogate
    skill = parse_skill(data, cut)
    assert isinstance(skill, SkillFile) and (skill.name is None or isinstance(skill.name, str))
    _sendable([skill.name, skill.description])


@FAST
@given(st.one_of(HOSTILE_BYTES, JSON_VALUES.map(lambda v: json.dumps(v).encode())), st.booleans())
def test_tools_json_never_raises_and_what_it_keeps_is_sendable(data: bytes, cut: bool) -> None:
    tools = parse_tools(data, cut)
    assert isinstance(tools, ToolsFile)
    assert len(tools.problems) <= MAX_PROBLEMS_PER_FILE + 1
    for tool in tools.tools:
        assert isinstance(tool, dict) and tool["input_schema"]["type"] == "object"
        assert not too_deep(tool)
    _sendable(list(tools.tools))


def _toml_value(value: Any) -> str:
    return (
        json.dumps(value)
        if not isinstance(value, dict)
        else "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    )


@FAST
@given(
    st.one_of(
        HOSTILE_BYTES,
        st.dictionaries(
            st.sampled_from(["model", "cache", "max_tokens", "budget", "other"]), JSON_VALUES, max_size=5
        ).map(lambda d: "\n".join(f"{k} = {_toml_value(v)}" for k, v in d.items()).encode()),
    ),
    st.booleans(),
)
def test_agent_toml_never_raises_and_every_value_is_usable(data: bytes, cut: bool) -> None:
    config = parse_agent_toml(data, cut)
    assert isinstance(config, AgentConfig)
    assert config.cache_mode in ("off", "5m", "1h")
    assert config.max_tokens is None or 1 <= config.max_tokens <= MAX_TOKENS_CAP
    assert config.model is None or (0 < len(config.model) <= 128 and config.model.isprintable())
    if config.budget is not None:
        for _period, cap in config.budget.caps:
            usd = nano_to_usd(cap)
            assert usd is not None and math.isfinite(usd)
    _sendable(list(config.problems))


def test_the_attacks_measured_in_issue_14_are_problems() -> None:
    deep = parse_tools(b"[" * 50_000 + b"]" * 50_000, False)
    assert deep.tools == () and f"nested deeper than {MAX_NESTING}" in deep.problems[0]
    huge = parse_tools(b'[{"name":"t","input_schema":{"type":"object","maximum":' + b"9" * 5000 + b"}}]", False)
    assert huge.tools == () and "number longer than" in huge.problems[0]
    assert "NaN" in parse_tools(b'[{"name":"t","input_schema":{"type":"object","x":NaN}}]', False).problems[0]
    assert "too long" in parse_agent_toml(b"max_tokens = " + b"9" * 5000, False).problems[0]
    assert "nested deeper" in parse_agent_toml(b"a = " + b"[" * 5000 + b"]" * 5000, False).problems[0]
    fails_closed = parse_agent_toml(b"[budget]\ndaily_usd = " + b"9" * 5000, False)
    assert fails_closed.budget is not None and fails_closed.budget.problem
    too_big = parse_agent_toml(b"[budget]\ndaily_usd = 1e300", False)
    assert too_big.budget is not None and too_big.budget.problem and too_big.budget.caps == ()
    many = parse_agent_toml("\n".join(f"k{n} = 1" for n in range(500)).encode(), False)
    assert len(many.problems) == MAX_PROBLEMS_PER_FILE + 1 and "480 more" in many.problems[-1]


def test_pathological_text_is_parsed_in_linear_time() -> None:
    """Both were quadratic: a 64 KiB agent.toml of blank lines took seconds to scan for [budget], and a SKILL.md of
    continuation lines grew its value one copy per line."""
    started = time.process_time()
    assert budget_of_unreadable("\n" * 65_000 + "x") is None
    parse_skill(b"---\ndescription: a\n" + b" b\n" * 21_000, True)
    assert time.process_time() - started < 0.5  # both took 1-6 s before; linear takes a few milliseconds


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.fixed_dictionaries(
        {},
        optional={
            n: HOSTILE_BYTES for n in ("SYSTEM.md", "MEMORY.md", "tools.json", "agent.toml", "skills/s/SKILL.md")
        },
    )
)
def test_one_agents_broken_files_leave_the_others_alone(tmp_path_factory: Any, files: dict[str, bytes]) -> None:
    agents: Path = tmp_path_factory.mktemp("agents")
    (agents / "good").mkdir()
    (agents / "good" / "SYSTEM.md").write_text("I am fine.")
    for name, data in files.items():
        path = agents / "broken" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (agents / "broken").mkdir(exist_ok=True)
    loader = WorkspaceLoader(agents)
    broken = loader.load("broken")
    _sendable([broken.system_prompt, broken.memory, list(broken.tools), list(broken.problems)])
    good = loader.load("good")
    assert good.system_prompt == "I am fine." and good.problems == ()
    assert loader.list_agents() == ["broken", "default", "good"]


async def test_a_hostile_workspace_leaks_nothing_and_breaks_nothing_end_to_end(
    gateway_factory: Any, settings: Any, fake: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """As reported: MEMORY.md -> a secrets file reached the model and the inspector; a 5,000-digit number in
    agent.toml made that agent's sends INTERNAL_ERROR and failed usage.query and `agentspace usage` for everyone."""
    from gateway.cli import main
    from tests.conftest import chat, request

    secret = tmp_path / "secrets.env"
    secret.write_text("ANTHROPIC_API_KEY=sk-ant-must-not-leak")
    leaky = settings.agents_dir / "leaky"
    leaky.mkdir(parents=True)
    (leaky / "MEMORY.md").symlink_to(secret)
    (leaky / "SYSTEM.md").symlink_to("/proc/self/environ")
    broken = settings.agents_dir / "broken"
    broken.mkdir()
    (broken / "agent.toml").write_text("max_tokens = " + "9" * 5000)
    (broken / "tools.json").write_text("[" * 50_000 + "]" * 50_000)
    ws = await (await gateway_factory(settings)).ws()

    end = (await chat(ws, "hello", agentId="leaky"))[-1]
    assert end["type"] == "chat.stream.end"
    assert "sk-ant-must-not-leak" not in json.dumps([r.body for r in fake.requests])
    inspection = await request(ws, {"type": "context.inspect", "sessionId": end["sessionId"]})
    assert "sk-ant-must-not-leak" not in json.dumps(inspection)
    assert any(p.startswith("MEMORY.md: refused: leads outside its folder") for p in inspection["problems"])
    assert any(p.startswith("SYSTEM.md: refused: leads outside its folder") for p in inspection["problems"])

    assert (await chat(ws, "hello", agentId="broken"))[-1]["type"] == "chat.stream.end"
    report = await request(ws, {"type": "usage.query", "id": "u"})
    assert report["type"] == "usage.report" and report["grandTotal"]["requestCount"] == 2

    monkeypatch.setenv("AGENTSPACE_HOME", str(settings.home))
    monkeypatch.setenv("AGENTSPACE_DB_URL", settings.db_url)
    assert await asyncio.to_thread(main, ["usage"]) == 0
