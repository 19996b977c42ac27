"""A tiny MCP server for the tests, written with the official `mcp` SDK: `echo` answers, `fail` errors, `hang` never
answers, `die` kills its own process mid-call, `pid` says which process answered (to see a restart).

    python tests/mcp_servers/echo.py                 # stdio
    python tests/mcp_servers/echo.py --http PORT     # streamable HTTP at http://127.0.0.1:PORT/mcp
"""

from __future__ import annotations

import os
import sys

import anyio
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("echo")


@server.tool()
def echo(text: str) -> str:
    """Say the text back."""
    return f"echo: {text}"


@server.tool()
def fail(reason: str = "broken on purpose") -> str:
    """Always fails, saying why."""
    raise ToolError(reason)


@server.tool()
async def hang() -> str:
    """Never answers."""
    await anyio.sleep_forever()
    return "unreachable"


@server.tool()
def die() -> str:
    """Ends the server's process in the middle of the call."""
    os._exit(3)


@server.tool()
def pid() -> str:
    """The server process's id."""
    return str(os.getpid())


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
