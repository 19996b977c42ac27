"""A turn's tools: what is offered to the model, in a stable order (built-ins, tools.json, MCP servers' tools, the
client's own), and for each its executor and approval policy. The registry outlives turns: it holds the MCP
connections, the memory locks and the waits for answers from clients."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway import errors
from gateway.context.workspace import Workspace
from gateway.settings import Settings

from .base import OfferedTool, Toolbox
from .mcp import McpPool
from .memory import MEMORY_TOOL, MemoryTool
from .policy import resolve_policy
from .skills import READ_SKILL, READ_SKILL_FILE, SkillReader
from .waits import Waits

BUILTIN_NAMES = frozenset({"read_skill", "read_skill_file", "memory"})
# Keys of a tools.json entry that are the gateway's, not Anthropic's: never sent upstream.
GATEWAY_KEYS = ("approval",)


class ToolRegistry:
    def __init__(self, settings: Settings) -> None:
        self.waits = Waits()
        self.mcp = McpPool(settings)
        self._memory_locks: dict[str, asyncio.Lock] = {}

    async def close(self) -> None:
        await self.mcp.close()

    async def toolbox(self, workspace: Workspace, client_tools: list[dict[str, Any]] | None = None) -> Toolbox:
        config = workspace.tool_config
        approvals = config.approvals
        offered: list[OfferedTool] = []

        def offer(name: str, definition: dict[str, Any], executor: str, run: Any, **extra: Any) -> None:
            policy = resolve_policy(name, approvals, extra.pop("declared", None))
            offered.append(OfferedTool(name, definition, executor, policy, run, **extra))

        reader = SkillReader(workspace)
        if workspace.skills and "read_skill" in config.builtins:
            offer("read_skill", READ_SKILL, "builtin", reader.read_skill)
        if workspace.skills and "read_skill_file" in config.builtins:
            offer("read_skill_file", READ_SKILL_FILE, "builtin", reader.read_skill_file)
        if "memory" in config.builtins and workspace.root is not None:
            lock = self._memory_locks.setdefault(workspace.agent_id, asyncio.Lock())
            memory = MemoryTool(workspace.root, lock)
            offer("memory", dict(MEMORY_TOOL), "builtin", memory.run, serial=f"memory:{workspace.agent_id}")
        own = {t["name"]: t for t in client_tools or []}
        for tool in workspace.tools:
            if tool["name"] in BUILTIN_NAMES or tool["name"] in own:
                continue  # the built-in, or the client's newer definition, wins
            declared = tool.get("approval")
            definition = {k: v for k, v in tool.items() if k not in GATEWAY_KEYS}
            policy = declared if declared in ("allow", "ask", "deny") else None
            offer(tool["name"], definition, "client", None, declared=policy)
        listed, problems = await self.mcp.toolbox_entries(workspace, config)
        for name, definition, run in listed:
            offer(name, definition, "mcp", run)
        taken = {tool.name for tool in offered}
        for name, tool in own.items():
            if name in taken:
                raise errors.InvalidMessage(
                    f"chat.send: tool {name!r} clashes with a tool the gateway runs for this agent; rename it",
                    field="tools",
                )
            offer(name, {k: v for k, v in tool.items() if k not in GATEWAY_KEYS}, "client", None)
        return Toolbox(tuple(offered), tuple(problems))
