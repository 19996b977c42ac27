"""`agentspace chat` driven the way a person uses it: in a real terminal (a pty), and in a shell pipe."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from typing import Any

import pexpect

from gateway.client import GatewayClient
from tests.conftest import Gateway
from tests.fake_anthropic import FakeAnthropic, Reply

STATS = r"\[\d+ in · \d+ out · \$\d+\.\d{6} · \d+\.\ds · (?:cancelled · )?session (\w{8})\]"


def cli_env() -> dict[str, str]:
    return {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}


def url_of(gateway: Gateway) -> str:
    return str(gateway.client.make_url("/gateway")).replace("http://", "ws://")


class Terminal:
    """A pty running the CLI. pexpect blocks, so each wait runs in a thread while the gateway serves in this loop."""

    def __init__(self, *args: str) -> None:
        self.child = pexpect.spawn(
            sys.executable, ["-m", "gateway", *args], env=cli_env(), encoding="utf-8", timeout=20, dimensions=(40, 200)
        )

    async def expect(self, pattern: Any) -> re.Match[str]:
        await asyncio.to_thread(self.child.expect, pattern)
        match: re.Match[str] = self.child.match
        return match

    def type(self, line: str) -> None:
        self.child.sendline(line)

    def ctrl_c(self) -> None:
        self.child.sendintr()


async def test_terminal_chat_streams_lists_cancels_and_quits(gateway: Gateway, fake: FakeAnthropic) -> None:
    term = Terminal("chat", "--url", url_of(gateway))
    try:
        await term.expect("/help for commands")
        term.type("hello there")
        await term.expect("You said: hello there")
        short = (await term.expect(STATS)).group(1)
        term.type("/sessions")
        await term.expect(rf"\* {short}\s+hello there\s+2")

        # A reply that stops mid-way: Ctrl-C must cancel it (and cut the upstream), not quit.
        fake.queue(Reply(text="alpha beta gamma delta", hold_after_deltas=2))
        term.type("keep going")
        await fake.wait_held()
        await term.expect("alpha beta ")
        term.ctrl_c()
        assert await fake.wait_stream_closed() is True
        await term.expect(rf"cancelled · session {short}\]")
        term.type("/context")
        await term.expect(r"history\s+\d+\s+\d+")
        await term.expect("window: ")
        term.ctrl_c()
        await term.expect(r"Ctrl-C again to quit")
        term.ctrl_c()
        await term.expect(pexpect.EOF)
    finally:
        term.child.close(force=True)
    assert term.child.exitstatus == 0
    async with GatewayClient.connect(url_of(gateway)) as gw:
        [session] = (await gw.sessions())["sessions"]
        history = await gw.history(session["sessionId"])
    last = history["messages"][-1]
    assert last["status"] == "cancelled" and last["text"] == "alpha beta "


async def run_cli(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        env=cli_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_one_question_pipes_only_the_answer(gateway: Gateway, fake: FakeAnthropic) -> None:
    fake.queue(Reply(text="WAL keeps readers and the writer apart.", thinking="Let me think."))
    code, out, err = await run_cli("chat", "--url", url_of(gateway), "-", stdin=b"What is WAL mode?\n")
    assert (code, out) == (0, "WAL keeps readers and the writer apart.\n")
    assert re.search(STATS, err) and "Let me think" not in out + err
    assert fake.requests[-1].body["messages"][0]["content"][0]["text"] == "What is WAL mode?\n"

    code, out, err = await run_cli("chat", "--url", url_of(gateway), "--session", "nope", "hi")
    assert code == 1 and out == ""
    assert "SESSION_NOT_FOUND" in err


async def test_the_cli_starts_without_importing_the_server() -> None:
    """`agentspace chat` should open in about a second: the SDK, SQLAlchemy and tiktoken take several to import, and
    only `serve` (and commands that open the database) need them, at run time."""
    code, out, err = await run_cli_python(
        "import sys, gateway.cli; "
        "print(sorted(m for m in ('anthropic', 'sqlalchemy', 'tiktoken', 'gateway.app') if m in sys.modules))"
    )
    assert (code, out.strip()) == (0, "[]"), err


async def run_cli_python(source: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", source, env=cli_env(), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
