"""An agent's tool settings from agent.toml: which built-in tools it gets, the bounds of its tool loop, approval
policies (globs allowed) and its MCP servers. docs/AGENTS.md documents every key; keep the two in step.

Like every workspace parser, this never raises: a bad value falls back to its default and leaves a problem.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

BUILTIN_TOOLS = ("read_skill", "read_skill_file", "memory")
POLICIES = ("allow", "ask", "deny")
# An MCP server's name prefixes its tools (`server__tool`), and tool names are at most 64 characters.
_SERVER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PATTERN = re.compile(r"[A-Za-z0-9_*?\[\]!-]{1,128}")


@dataclass(frozen=True, slots=True)
class ToolLimits:
    """The bounds of one turn's tool loop (docs/AGENTS.md, `[tools]`)."""

    max_requests: int = 10  # model requests per turn, the final summing-up one included
    max_tool_calls: int = 25
    max_seconds: float = 1800.0  # wall clock of the whole turn, approvals waited on included
    repeat_limit: int = 2  # the same tool with the same input more often than this gets an error result
    call_timeout_s: float = 60.0  # one MCP call
    client_timeout_s: float = 120.0  # one client tool call
    approval_timeout_s: float = 600.0
    max_result_chars: int = 100_000  # a tool result's text sent to the model


_LIMITS: dict[str, tuple[type, float, float]] = {
    "max_requests": (int, 1, 1000),
    "max_tool_calls": (int, 0, 10_000),
    "max_seconds": (float, 0.1, 86_400),
    "repeat_limit": (int, 1, 1000),
    "call_timeout_s": (float, 0.1, 86_400),
    "client_timeout_s": (float, 0.1, 86_400),
    "approval_timeout_s": (float, 0.1, 7 * 86_400),
    "max_result_chars": (int, 100, 10_000_000),
}


@dataclass(frozen=True, slots=True)
class McpServer:
    """One `[mcp.<name>]` table: a stdio command or a streamable-HTTP URL."""

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    cwd: str | None = None
    url: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    timeout_s: float | None = None  # per call; None: the agent's call_timeout_s


@dataclass(frozen=True, slots=True)
class ToolConfig:
    builtins: tuple[str, ...] = BUILTIN_TOOLS
    limits: ToolLimits = field(default_factory=ToolLimits)
    approvals: tuple[tuple[str, str], ...] = ()  # (name or glob, policy), in file order
    mcp: tuple[McpServer, ...] = ()
    problems: tuple[str, ...] = ()


def parse_tool_config(tools: object, mcp: object) -> ToolConfig:
    """From agent.toml's `[tools]` and `[mcp]` tables (each None when absent)."""
    problems: list[str] = []
    builtins: tuple[str, ...] = BUILTIN_TOOLS
    limits: dict[str, Any] = {}
    approvals: list[tuple[str, str]] = []
    if tools is not None and not isinstance(tools, dict):
        problems.append("[tools] must be a table; using the defaults")
        tools = None
    for key, value in (tools or {}).items():
        if key == "builtin":
            builtins = _builtins(value, problems)
        elif key == "approval":
            approvals = _approvals(value, problems)
        elif key in _LIMITS:
            number = _limit(key, value, problems)
            if number is not None:
                limits[key] = number
        else:
            problems.append(f"[tools]: unknown key {key!r} ignored")
    servers = _servers(mcp, problems)
    return ToolConfig(builtins, ToolLimits(**limits), tuple(approvals), servers, tuple(problems))


def _builtins(value: object, problems: list[str]) -> tuple[str, ...]:
    if value is True:
        return BUILTIN_TOOLS
    if value is False:
        return ()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        unknown = [v for v in value if v not in BUILTIN_TOOLS]
        if unknown:
            problems.append(f"[tools] builtin: unknown tool(s) {', '.join(map(repr, unknown))} ignored")
        return tuple(v for v in BUILTIN_TOOLS if v in value)
    problems.append(f"[tools] builtin must be true, false or a list of {', '.join(BUILTIN_TOOLS)}; using all")
    return BUILTIN_TOOLS


def _approvals(value: object, problems: list[str]) -> list[tuple[str, str]]:
    if not isinstance(value, dict):
        problems.append('[tools.approval] must be a table of "tool name or glob" = "allow" | "ask" | "deny"; ignored')
        return []
    found: list[tuple[str, str]] = []
    for pattern, policy in value.items():
        if not _PATTERN.fullmatch(pattern):
            problems.append(f"[tools.approval]: {pattern[:80]!r} is not a tool name or glob; ignored")
        elif policy not in POLICIES:
            problems.append(f'[tools.approval]: {pattern!r} must be "allow", "ask" or "deny"; ignored')
        else:
            found.append((pattern, policy))
    return found


def _limit(key: str, value: object, problems: list[str]) -> int | float | None:
    kind, low, high = _LIMITS[key]
    number_ok = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int and not isinstance(value, int):
        number_ok = False
    if not number_ok or not math.isfinite(float(value)) or not low <= float(value) <= high:  # type: ignore[arg-type]
        what = "an integer" if kind is int else "a number"
        problems.append(f"[tools] {key} must be {what} from {low:g} to {high:g}; using the default")
        return None
    return value  # type: ignore[return-value]


def _servers(mcp: object, problems: list[str]) -> tuple[McpServer, ...]:
    if mcp is None:
        return ()
    if not isinstance(mcp, dict):
        problems.append("[mcp] must hold one table per server ([mcp.NAME]); ignored")
        return ()
    servers: list[McpServer] = []
    for name, table in mcp.items():
        label = f"[mcp.{name[:40]}]"
        if not _SERVER_NAME.fullmatch(name) or "__" in name:
            problems.append(f"{label}: a server name is 1-32 letters, digits, '_' or '-', without '__'; ignored")
        elif not isinstance(table, dict):
            problems.append(f"{label} must be a table; ignored")
        else:
            server = _server(name, table, label, problems)
            if server is not None:
                servers.append(server)
    return tuple(servers)


def _server(name: str, table: dict[str, Any], label: str, problems: list[str]) -> McpServer | None:
    unknown = sorted(set(table) - {"command", "args", "env", "cwd", "url", "headers", "timeout_s"})
    if unknown:
        problems.append(f"{label}: unknown key(s) {', '.join(unknown)} ignored")
    command, url = table.get("command"), table.get("url")
    if (command is None) == (url is None):
        problems.append(f"{label}: give either command (a stdio server) or url (streamable HTTP); ignored")
        return None
    if command is not None and (not isinstance(command, str) or not command.strip() or "\x00" in command):
        problems.append(f"{label}: command must be a non-empty string; ignored")
        return None
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        problems.append(f"{label}: url must start with http:// or https://; ignored")
        return None
    args = table.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) and "\x00" not in a for a in args):
        problems.append(f"{label}: args must be a list of strings; ignored")
        return None
    env = _string_table(table.get("env"), f"{label} env", problems, _ENV_NAME)
    headers = _string_table(table.get("headers"), f"{label} headers", problems, None)
    if env is None or headers is None:
        return None
    cwd = table.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or "\x00" in cwd):
        problems.append(f"{label}: cwd must be a string; ignored")
        return None
    timeout = table.get("timeout_s")
    if timeout is not None and _limit("call_timeout_s", timeout, problems) is None:
        timeout = None
    return McpServer(name, command, tuple(args), env, cwd, url, headers, timeout)


def _string_table(
    value: object, label: str, problems: list[str], key_rule: re.Pattern[str] | None
) -> tuple[tuple[str, str], ...] | None:
    if value is None:
        return ()
    ok = isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, str) and "\x00" not in v and (key_rule is None or key_rule.fullmatch(k))
        for k, v in value.items()
    )
    if not ok:
        problems.append(f"{label} must be a table of names to strings; server ignored")
        return None
    assert isinstance(value, dict)
    return tuple(value.items())
