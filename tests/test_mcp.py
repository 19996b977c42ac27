"""MCP servers declared in agent.toml, through the official `mcp` SDK, against a tiny server written with it
(tests/mcp_servers/echo.py): its tools are listed as `echo__tool`, calls answer, errors and hangs become error
results (never a hung turn), a server that dies is started again, one that cannot start leaves its tools out and says
so, and the gateway stops its servers when it stops."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import ClientWebSocketResponse

from gateway.settings import Settings
from tests.conftest import Gateway, chat, request
from tests.fake_anthropic import FakeAnthropic, Reply, tool_reply, tool_use

SERVER = Path(__file__).parent / "mcp_servers" / "echo.py"


def make_agent(settings: Settings, server: str, extra: str = "") -> None:
    root = settings.agents_dir / "mcp"
    root.mkdir(parents=True)
    (root / "agent.toml").write_text(
        f'[tools]\nbuiltin = false\n{extra}\n[tools.approval]\n"echo__*" = "allow"\n"slow__*" = "allow"\n\n{server}'
    )


def stdio_server() -> str:
    return f"[mcp.echo]\ncommand = {json.dumps(sys.executable)}\nargs = [{json.dumps(str(SERVER))}]\n"


def results(frames: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in frames if f["type"] == "chat.tool.result"}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_stdio_server_answers_errors_and_hangs(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings
) -> None:
    # The same server twice: `slow` has a short call timeout for its hanging call, and only it (a loaded machine may
    # take longer than that to answer the others).
    slow = stdio_server().replace("[mcp.echo]", "[mcp.slow]") + "timeout_s = 0.5\n"
    make_agent(settings, stdio_server() + "\n" + slow)
    ws = await gateway.ws()
    calls = [
        tool_use("echo__echo", {"text": "hi"}),
        tool_use("echo__fail", {}),
        tool_use("slow__hang"),
        tool_use("echo__pid"),
    ]
    fake.queue(tool_reply(*calls), Reply(text="done"))
    frames = await chat(ws, "use the server", agentId="mcp")
    sent = {t["name"]: t for t in fake.requests[0].body["tools"]}
    assert {"echo__echo", "echo__fail", "echo__hang", "echo__die", "echo__pid", "slow__hang"} <= set(sent)
    assert sent["echo__echo"]["input_schema"]["properties"]["text"]["type"] == "string"
    assert sent["echo__echo"]["description"] == "Say the text back."
    got = results(frames)
    assert (got["echo__echo"]["status"], got["echo__echo"]["content"]) == ("done", "echo: hi")
    assert got["echo__fail"]["isError"] is True and "broken on purpose" in got["echo__fail"]["content"]
    assert got["slow__hang"]["isError"] is True and "did not answer within 0.5 s" in got["slow__hang"]["content"]
    assert next(f for f in frames if f["type"] == "chat.tool.call")["executor"] == "mcp"
    assert frames[-1]["type"] == "chat.stream.end" and frames[-1]["toolCalls"] == 4
    pid = int(got["echo__pid"]["content"])
    # Kept alive between turns: the same process answers the next one.
    fake.queue(tool_reply(tool_use("echo__pid")), Reply(text="same"))
    again = await chat(ws, "again", sessionId=frames[0]["sessionId"])
    assert int(results(again)["echo__pid"]["content"]) == pid
    await ws.close()
    await gateway.client.close()  # the app's cleanup stops its MCP servers
    async with asyncio.timeout(10):
        while alive(pid):  # noqa: ASYNC110 - another process's exit has no event to wait on here
            await asyncio.sleep(0.02)


async def test_a_server_that_dies_is_started_again(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings, stdio_server())
    fake.queue(tool_reply(tool_use("echo__pid")), tool_reply(tool_use("echo__die")), Reply(text="it died"))
    frames = await chat(ws, "kill it", agentId="mcp")
    died = results(frames)["echo__die"]
    assert died["isError"] is True and "stopped during the call" in died["content"]
    assert frames[-1]["type"] == "chat.stream.end"
    first = int(results(frames)["echo__pid"]["content"])
    fake.queue(tool_reply(tool_use("echo__pid")), Reply(text="back"))
    later = await chat(ws, "again", sessionId=frames[0]["sessionId"])
    assert int(results(later)["echo__pid"]["content"]) != first


async def test_a_server_that_cannot_start_leaves_its_tools_out(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings, '[mcp.gone]\ncommand = "/nonexistent/mcp-server"\n')
    frames = await chat(ws, "hello", agentId="mcp")
    assert frames[-1]["type"] == "chat.stream.end"
    assert "tools" not in fake.requests[-1].body
    inspection = await request(ws, {"type": "context.inspect", "sessionId": frames[0]["sessionId"]})
    assert any(p.startswith("MCP server 'gone' is unavailable") for p in inspection["problems"]), inspection["problems"]


async def test_a_streamable_http_server(ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SERVER),
        "--http",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            while True:  # up once it answers on its port
                try:
                    async with http.get(f"http://127.0.0.1:{port}/mcp"):
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        server = f'[mcp.echo]\nurl = "http://127.0.0.1:{port}/mcp"\nheaders = {{ X-Test = "yes" }}\n'
        make_agent(settings, server)
        fake.queue(tool_reply(tool_use("echo__echo", {"text": "over http"})), Reply(text="done"))
        frames = await chat(ws, "http", agentId="mcp")
        assert results(frames)["echo__echo"]["content"] == "echo: over http"
    finally:
        proc.kill()
        await proc.wait()
