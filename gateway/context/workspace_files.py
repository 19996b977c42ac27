"""The files of an agent workspace, each parsed on its own: SYSTEM.md and MEMORY.md, a skill's SKILL.md front matter,
tools.json and agent.toml, with the limits docs/AGENTS.md documents. A broken file never raises: it parses to
defaults and says what was wrong in `problems`."""

from __future__ import annotations

import codecs
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from gateway.billing.budget_config import Budget, budget_of_unreadable, parse_budget

from .context_config import ContextConfig, parse_context_config
from .tool_config import ToolConfig, parse_tool_config

MAX_SYSTEM_BYTES = 64 * 1024
MAX_MEMORY_BYTES = 64 * 1024
MAX_SKILLS = 100
MAX_SKILL_DESCRIPTION_CHARS = 1024
# Only a SKILL.md's front matter is used, and bodies can be long: stop reading early.
MAX_SKILL_FILE_BYTES = 64 * 1024
MAX_TOOLS_BYTES = 256 * 1024
MAX_TOOLS = 128
MAX_AGENT_TOML_BYTES = 64 * 1024
CACHE_MODES = ("off", "5m", "1h")
DEFAULT_CACHE_MODE = "5m"
# Hostile or broken files must become problems, not exceptions or slow requests: nesting deeper than this, numbers
# longer than this (Python refuses integers over 4,300 digits with a ValueError) and more problems than this per file.
MAX_NESTING = 64
MAX_NUMBER_CHARS = 64
MAX_PROBLEMS_PER_FILE = 20
MAX_MODEL_CHARS = 128
MAX_TOKENS_CAP = 1_000_000  # the protocol's own bound on maxTokens

# Anthropic rejects the whole request over one bad tool, so bad tools are dropped here instead.
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_AGENT_TOML_KEYS = frozenset({"model", "cache", "max_tokens", "budget", "tools", "mcp", "context"})


@dataclass(frozen=True, slots=True)
class TextFile:
    text: str
    truncated: bool


@dataclass(frozen=True, slots=True)
class SkillFile:
    name: str | None
    description: str
    truncated: bool


@dataclass(frozen=True, slots=True)
class ToolsFile:
    tools: tuple[dict[str, Any], ...] = ()
    truncated: bool = False
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AgentConfig:
    model: str | None = None
    cache_mode: str = DEFAULT_CACHE_MODE
    max_tokens: int | None = None
    problems: tuple[str, ...] = ()
    budget: Budget | None = None
    tools: ToolConfig = field(default_factory=ToolConfig)
    context: ContextConfig = field(default_factory=ContextConfig)


def _decode(data: bytes, cut: bool) -> str:
    # When the read was cut at a limit, a non-final decode holds back a trailing partial character
    # instead of turning it into U+FFFD, so truncation lands on a character boundary.
    text = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final=not cut)
    return text.removeprefix("\ufeff")  # editors on Windows add a BOM that would otherwise reach the model


def parse_text(data: bytes, cut: bool) -> TextFile:
    return TextFile(_decode(data, cut).strip(), cut)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            # YAML's double-quoted escapes are a superset of JSON's; JSON covers what front matter uses.
            decoded = json.loads(value)
        except ValueError:
            return value[1:-1]
        return decoded if isinstance(decoded, str) else value[1:-1]
    return value.split(" #", 1)[0].rstrip()  # a plain scalar may end in a comment


def parse_front_matter(text: str) -> dict[str, str]:
    """The `key: value` pairs between the leading `---` lines; {} when there is no closed front matter."""
    lines = text.removeprefix("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        return {}
    # Pieces are joined at the end: extending a string per continuation line is quadratic in the file's size.
    raw: dict[str, list[str]] = {}
    key: str | None = None
    for line in lines[1:]:
        stripped = line.strip()
        if stripped in ("---", "..."):
            return {k: _unquote(" ".join(p for p in v if p)) for k, v in raw.items()}
        if not stripped or stripped.startswith("#"):
            continue
        if line[0] in " \t" and key is not None:
            # Indented lines continue the previous value (a folded YAML scalar); the index wants one line.
            raw[key].append(stripped)
            continue
        name, sep, value = line.partition(":")
        key = name.strip() if sep else None
        if key is not None:
            value = value.strip()
            raw[key] = ["" if value in ("|", ">", "|-", ">-", "|+", ">+") else value]
    return {}


def parse_skill(data: bytes, cut: bool) -> SkillFile:
    fields = parse_front_matter(_decode(data, cut))
    name = fields.get("name", "").strip() or None
    description = " ".join(fields.get("description", "").split())
    truncated = len(description) > MAX_SKILL_DESCRIPTION_CHARS
    return SkillFile(name, description[:MAX_SKILL_DESCRIPTION_CHARS], truncated)


def _tool_problem(item: object, seen: set[str]) -> str | None:
    if not isinstance(item, dict):
        return "not a JSON object"
    name = item.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
        return "name must be 1-64 letters, digits, '_' or '-'"
    if name in seen:
        return f"duplicate name {name!r}"
    if not isinstance(item.get("description", ""), str):
        return "description must be a string"
    schema = item.get("input_schema")
    if not isinstance(schema, dict) or schema.get("type") != "object":
        return 'input_schema must be a JSON Schema object with "type": "object"'
    return None


def _json_number(text: str) -> int | float:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"a number longer than {MAX_NUMBER_CHARS} characters")
    value = float(text) if any(c in text for c in ".eE") else int(text)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("a number too large to represent")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether lists and tables nest more than `limit` levels (iterative: a deep value cannot exhaust the stack)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _capped(problems: list[str], label: str) -> tuple[str, ...]:
    if len(problems) <= MAX_PROBLEMS_PER_FILE:
        return tuple(problems)
    more = len(problems) - MAX_PROBLEMS_PER_FILE
    return (*problems[:MAX_PROBLEMS_PER_FILE], f"{label}: {more} more problem(s) not listed")


def parse_tools(data: bytes, cut: bool) -> ToolsFile:
    if cut:
        # Half a JSON document cannot be parsed, so an oversized file yields no tools at all.
        return ToolsFile((), True, (f"tools.json: larger than {MAX_TOOLS_BYTES} bytes; no tools loaded",))
    try:
        raw = json.loads(
            _decode(data, False), parse_int=_json_number, parse_float=_json_number, parse_constant=_no_constant
        )
    except json.JSONDecodeError as exc:
        return ToolsFile(problems=(f"tools.json: line {exc.lineno}: {exc.msg} (column {exc.colno})",))
    except RecursionError:
        return ToolsFile(problems=(f"tools.json: nested deeper than {MAX_NESTING} levels; no tools loaded",))
    except ValueError as exc:
        return ToolsFile(problems=(f"tools.json: {exc}; no tools loaded",))
    if too_deep(raw):
        return ToolsFile(problems=(f"tools.json: nested deeper than {MAX_NESTING} levels; no tools loaded",))
    if not isinstance(raw, list):
        return ToolsFile(problems=("tools.json: expected a JSON list of tool definitions",))
    tools: list[dict[str, Any]] = []
    problems: list[str] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        problem = _tool_problem(item, seen)
        if problem is not None:
            problems.append(f"tools.json: tool {index}: {problem}; skipped")
            continue
        seen.add(item["name"])
        tools.append(item)
    truncated = len(tools) > MAX_TOOLS
    if truncated:
        problems.append(f"tools.json: {len(tools)} tools; only the first {MAX_TOOLS} are used")
    return ToolsFile(tuple(tools[:MAX_TOOLS]), truncated, _capped(problems, "tools.json"))


def parse_agent_toml(data: bytes, cut: bool) -> AgentConfig:
    text = _decode(data, cut)
    if cut:
        problem = f"agent.toml: larger than {MAX_AGENT_TOML_BYTES} bytes; ignored"
        return AgentConfig(problems=(problem,), budget=budget_of_unreadable(text))
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return AgentConfig(problems=(f"agent.toml: {exc}; ignored",), budget=budget_of_unreadable(text))
    except RecursionError:
        raw = None
    except ValueError:  # an integer beyond Python's 4,300-digit conversion limit
        return AgentConfig(problems=("agent.toml: a number is too long; ignored",), budget=budget_of_unreadable(text))
    if raw is None or too_deep(raw):
        problem = f"agent.toml: nested deeper than {MAX_NESTING} levels; ignored"
        return AgentConfig(problems=(problem,), budget=budget_of_unreadable(text))
    problems = [f"agent.toml: unknown key {_shown(key)} ignored" for key in raw if key not in _AGENT_TOML_KEYS]
    model = raw.get("model")
    if model is not None and not _model_name_ok(model):
        problems.append(
            f"agent.toml: model must be a name of 1-{MAX_MODEL_CHARS} characters without spaces or control"
            " characters; using the gateway default"
        )
        model = None
    cache = raw.get("cache", DEFAULT_CACHE_MODE)
    if not isinstance(cache, str) or cache not in CACHE_MODES:
        problems.append(f'agent.toml: cache must be "off", "5m" or "1h"; using "{DEFAULT_CACHE_MODE}"')
        cache = DEFAULT_CACHE_MODE
    max_tokens = raw.get("max_tokens")
    # bool is an int subclass; `max_tokens = true` is a mistake, not 1.
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_TOKENS_CAP
    ):
        problems.append(
            f"agent.toml: max_tokens must be an integer from 1 to {MAX_TOKENS_CAP}; using the gateway default"
        )
        max_tokens = None
    budget = parse_budget(raw.get("budget"))
    if budget is not None and budget.problem:
        problems.append(f"agent.toml: {budget.problem}; this agent's sends are refused until it is fixed")
    tools = parse_tool_config(raw.get("tools"), raw.get("mcp"))
    problems.extend(f"agent.toml: {problem}" for problem in tools.problems)
    context = parse_context_config(raw.get("context"))
    problems.extend(f"agent.toml: {problem}" for problem in context.problems)
    capped = _capped(problems, "agent.toml")
    return AgentConfig(model.strip() if model else None, cache, max_tokens, capped, budget, tools, context)


def _model_name_ok(model: object) -> bool:
    # It is sent upstream, stored and logged: a name, not free text.
    if not isinstance(model, str):
        return False
    name = model.strip()
    return 0 < len(name) <= MAX_MODEL_CHARS and name.isprintable() and not any(c.isspace() for c in name)


def _shown(key: str) -> str:
    return repr(key if len(key) <= 64 else key[:64] + "...")
