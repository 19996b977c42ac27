"""Approval policies: `allow`, `ask` or `deny` per tool, from agent.toml's `[tools.approval]` (names or globs) and a
tools.json tool's own `approval` key, with defaults for what is safe to run unasked."""

from __future__ import annotations

from fnmatch import fnmatchcase

# Read-only built-ins and the agent's own memory run unasked; MCP servers' and clients' tools ask.
DEFAULTS = {"read_skill": "allow", "read_skill_file": "allow", "memory": "allow"}
DEFAULT_POLICY = "ask"


def resolve_policy(name: str, approvals: tuple[tuple[str, str], ...], declared: str | None = None) -> str:
    """An exact name in agent.toml wins, then the tool's own `approval` (tools.json), then the longest matching glob
    (the first of equal length), then the default."""
    for pattern, policy in approvals:
        if pattern == name:
            return policy
    if declared is not None:
        return declared
    best: tuple[int, str] | None = None
    for pattern, policy in approvals:
        if fnmatchcase(name, pattern) and (best is None or len(pattern) > best[0]):
            best = (len(pattern), policy)
    if best is not None:
        return best[1]
    return DEFAULTS.get(name, DEFAULT_POLICY)
