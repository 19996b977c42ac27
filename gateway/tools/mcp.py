"""MCP servers an agent declares in agent.toml (`[mcp.NAME]`), through the official `mcp` SDK (2.x): a stdio command
or a streamable-HTTP URL. Each is connected on first use, kept open, and restarted after it dies; every call has a
timeout, so a dead or slow server gives the model an error result, never a hung turn. The pool is opened and closed
with the app (`app.cleanup_ctx`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx2

from gateway.context.tool_config import McpServer, ToolConfig
from gateway.context.workspace import Workspace
from gateway.settings import Settings

from .base import Runner, ToolOutcome

if TYPE_CHECKING:  # the SDK takes about a second to import: only agents with MCP servers pay for it, when used
    from mcp import Client
    from mcp_types import CallToolResult, Tool

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 20.0
RETRY_AFTER_FAILURE_S = 30.0  # a server that failed to start is not tried again for each turn in between
MAX_TOOLS_PER_SERVER = 128
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def expand(value: str) -> str:
    """`${NAME}` from the gateway's environment, so secrets need not be written into agent.toml."""
    return _VAR.sub(lambda m: os.environ.get(m.group(1), ""), value)


class McpConnection:
    """One server for one agent. The SDK's client must be entered and left in one task, so a task of its own holds it
    open; calls from turns go through it."""

    def __init__(self, server: McpServer, cwd: Path | None) -> None:
        self.server = server
        self._cwd = cwd
        self._client: Client | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._connecting = asyncio.Lock()
        self._tools: list[Tool] | None = None
        self._failed: tuple[float, Exception] | None = None

    async def client(self) -> Client:
        async with self._connecting:
            if self._client is not None and self._task is not None and not self._task.done():
                return self._client
            if self._failed is not None and time.monotonic() - self._failed[0] < RETRY_AFTER_FAILURE_S:
                raise self._failed[1]
            ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._hold(ready), name=f"mcp-{self.server.name}")
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    client = await asyncio.shield(ready)
            except BaseException as exc:
                await self.close()
                if isinstance(exc, Exception):
                    failure = (
                        ConnectionError(f"did not start within {CONNECT_TIMEOUT_S:g} s")
                        if isinstance(exc, TimeoutError)
                        else exc
                    )
                    self._failed = (time.monotonic(), failure)
                    raise failure from None
                raise
            self._failed = None
            return client

    async def _hold(self, ready: asyncio.Future[Client]) -> None:
        from mcp import Client

        try:
            async with contextlib.AsyncExitStack() as stack:
                client = await stack.enter_async_context(Client(await self._target(stack)))
                self._client = client
                ready.set_result(client)
                await self._stop.wait()
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else ConnectionError("cancelled"))
            elif not isinstance(exc, asyncio.CancelledError):
                log.warning("MCP server %s stopped: %s", self.server.name, exc)
        finally:
            self._client = None
            self._tools = None

    async def _target(self, stack: contextlib.AsyncExitStack) -> Any:
        from mcp import StdioServerParameters
        from mcp.client.streamable_http import streamable_http_client

        server = self.server
        if server.url is not None:
            headers = {k: expand(v) for k, v in server.headers}
            # The SDK's own defaults (30 s to connect, 300 s between bytes of a held stream); calls have our timeout.
            timeout = httpx2.Timeout(30.0, read=300.0)
            http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=timeout))
            return streamable_http_client(server.url, http_client=http)
        assert server.command is not None
        cwd = self._cwd / server.cwd if self._cwd is not None and server.cwd else server.cwd or self._cwd
        env = {k: expand(v) for k, v in server.env}
        return StdioServerParameters(command=server.command, args=list(server.args), env=env, cwd=cwd)

    async def close(self) -> None:
        """Stop the server (a stdio server's process ends); the next use starts it again."""
        task, self._task = self._task, None
        self._stop.set()
        if task is not None and not task.done():
            try:
                async with asyncio.timeout(5):
                    await asyncio.shield(task)
            except (TimeoutError, Exception):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def tools(self) -> list[Tool]:
        if self._tools is None:
            client = await self.client()
            found: list[Tool] = []
            cursor: str | None = None
            for _ in range(20):  # a paginator that never ends cannot hang a turn
                page = await client.list_tools(cursor=cursor)
                found.extend(page.tools)
                cursor = page.next_cursor
                if cursor is None or len(found) >= MAX_TOOLS_PER_SERVER:
                    break
            self._tools = found[:MAX_TOOLS_PER_SERVER]
        return self._tools

    async def call(self, name: str, arguments: dict[str, Any], timeout_s: float) -> ToolOutcome:
        from mcp import MCPError
        from mcp_types import CONNECTION_CLOSED

        label = f"MCP server {self.server.name!r}"
        try:
            async with asyncio.timeout(timeout_s):
                client = await self.client()
                result = await client.call_tool(name, arguments)
        except TimeoutError:
            return ToolOutcome(f"{label} did not answer within {timeout_s:g} s; the call was abandoned", True)
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                await self.close()  # it died: the next call starts it again
                return ToolOutcome(f"{label} stopped during the call (it will be restarted): {exc.message}", True)
            return ToolOutcome(f"{label}: {exc.message}", True)
        except Exception as exc:
            await self.close()
            return ToolOutcome(f"{label} failed: {type(exc).__name__}: {exc}"[:2000], True)
        return outcome_of(result)


def outcome_of(result: CallToolResult) -> ToolOutcome:
    """MCP content -> tool_result content: text as text, images as image blocks, anything else described in text."""
    blocks: list[dict[str, Any]] = []
    for item in result.content:
        if item.type == "text":
            if item.text:
                blocks.append({"type": "text", "text": item.text})
        elif item.type == "image" and item.mime_type in ("image/png", "image/jpeg", "image/gif", "image/webp"):
            blocks.append(
                {"type": "image", "source": {"type": "base64", "media_type": item.mime_type, "data": item.data}}
            )
        else:
            blocks.append(
                {"type": "text", "text": json.dumps(item.model_dump(mode="json", exclude_none=True))[:20_000]}
            )
    if not blocks and result.structured_content is not None:
        blocks.append({"type": "text", "text": json.dumps(result.structured_content, ensure_ascii=False)})
    if not blocks:
        return ToolOutcome("(no output)", bool(result.is_error))
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        return ToolOutcome(blocks[0]["text"], bool(result.is_error))
    return ToolOutcome(blocks, bool(result.is_error))


class McpPool:
    """Every agent's MCP connections in this process, by agent and server; a changed server table starts anew."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._connections: dict[tuple[str, str], McpConnection] = {}

    def connection(self, workspace: Workspace, server: McpServer) -> McpConnection:
        key = (workspace.agent_id, server.name)
        found = self._connections.get(key)
        if found is not None and found.server == server:
            return found
        if found is not None:
            asyncio.get_running_loop().create_task(found.close())  # agent.toml changed this server
        made = McpConnection(server, workspace.root)
        self._connections[key] = made
        return made

    async def toolbox_entries(
        self, workspace: Workspace, config: ToolConfig
    ) -> tuple[list[tuple[str, dict[str, Any], Runner]], list[str]]:
        """(name, definition, runner) for every tool of the agent's servers, namespaced `server__tool`; and what went
        wrong with servers that could not be listed (their tools are left out of this turn)."""
        entries: list[tuple[str, dict[str, Any], Runner]] = []
        problems: list[str] = []
        servers = [(s, self.connection(workspace, s)) for s in config.mcp]
        listed = await asyncio.gather(*(conn.tools() for _, conn in servers), return_exceptions=True)
        for (server, conn), tools in zip(servers, listed, strict=True):
            if isinstance(tools, BaseException):
                if not isinstance(tools, Exception):
                    raise tools
                problems.append(f"MCP server {server.name!r} is unavailable ({type(tools).__name__}: {tools})"[:300])
                continue
            timeout = server.timeout_s or config.limits.call_timeout_s
            for tool in tools:
                name = f"{server.name}__{tool.name}"
                if not _TOOL_NAME.fullmatch(name):
                    problems.append(f"MCP server {server.name!r}: tool {tool.name[:64]!r} has a name the API refuses")
                    continue
                definition = {"name": name, "input_schema": tool.input_schema or {"type": "object"}}
                if tool.description:
                    definition["description"] = tool.description[:4096]
                entries.append((name, definition, _runner(conn, tool.name, timeout)))
        return entries, problems

    async def close(self) -> None:
        connections, self._connections = list(self._connections.values()), {}
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)


def _runner(conn: McpConnection, name: str, timeout_s: float) -> Runner:
    async def run(arguments: dict[str, Any]) -> ToolOutcome:
        return await conn.call(name, arguments, timeout_s)

    return run
