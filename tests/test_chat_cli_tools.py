"""`agentspace chat` and tools: one line per call on stderr, approvals asked y/n/always in a terminal (a pty), and what
happens to an approval when there is no terminal to ask (denied at once) or stdin is a pipe (asked on /dev/tty)."""

from __future__ import annotations

import asyncio
import re
import shlex
import sys

import pexpect

from gateway.settings import Settings
from tests.conftest import Gateway
from tests.fake_anthropic import FakeAnthropic, Reply, tool_reply, tool_use
from tests.test_chat_cli import Terminal, cli_env, url_of

# A tool turn's sums pass 999 tokens: the numbers have thousands separators.
STATS = r"\[[\d,]+ in · [\d,]+ out · \$\d+\.\d{6} · \d+\.\ds · (?:cancelled · )?session (\w{8})\]"
OK_LINE = r'⚙ read_skill \{"name":"pdf"\} → ok \(\d+ ms\)'
PROMPT = r'\? run read_skill \{"name":"pdf"\}  \[y/N/always, expires \d\d:\d\d:\d\d\] '


def make_agent(settings: Settings) -> None:
    root = settings.agents_dir / "careful"
    (root / "skills" / "pdf").mkdir(parents=True)
    (root / "skills" / "pdf" / "SKILL.md").write_text("---\nname: pdf\ndescription: PDFs.\n---\nUse pdftotext.")
    (root / "agent.toml").write_text('[tools.approval]\n"read_*" = "ask"\n')


def pdf_call() -> dict[str, object]:
    return tool_use("read_skill", {"name": "pdf"})


async def test_a_terminal_asks_y_n_always_and_shows_each_call(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings)
    term = Terminal("chat", "--url", url_of(gateway), "--agent", "careful")
    try:
        await term.expect("/help for commands")

        # y: allowed once; the call's line, then the next step's text on a line of its own.
        fake.queue(tool_reply(pdf_call(), text="Let me check."), Reply(text="Use pdftotext.", thinking=None))
        term.type("how do I read a PDF?")
        await term.expect("Let me check.")
        await term.expect(PROMPT)
        term.type("y")
        await term.expect(OK_LINE)
        await term.expect("\r\nUse pdftotext.")
        short = (await term.expect(STATS)).group(1)

        # A word that is no answer asks again; always: allowed for the session, so the next call is not asked.
        fake.queue(tool_reply(pdf_call()), tool_reply(pdf_call()), Reply(text="Read it twice."))
        term.type("again, twice")
        await term.expect(PROMPT)
        term.type("maybe")
        await term.expect("answer y \\(allow once\\), n \\(deny\\) or always")
        term.type("always")
        await term.expect(OK_LINE)
        await term.expect(OK_LINE)
        await term.expect("Read it twice.")
        await term.expect(STATS)

        # n: denied; the model reads that the user declined.
        fake.queue(tool_reply(tool_use("read_skill_file", {"name": "pdf", "path": "x.md"})), Reply(text="Fine."))
        term.type("read a file")
        await term.expect(r"\? run read_skill_file")
        term.type("n")
        await term.expect(r"⚙ read_skill_file \{.*\} → denied: .*declined")
        await term.expect("Fine.")
        await term.expect(STATS)

        # Ctrl-C at a prompt cancels the turn: the prompt is withdrawn and the call reported as not run.
        fake.queue(tool_reply(tool_use("read_skill_file", {"name": "pdf", "path": "y.md"})))
        term.type("one more file")
        await term.expect(r"\? run read_skill_file")
        term.ctrl_c()
        await term.expect(r"\(no longer waiting\)")
        await term.expect(r"⚙ read_skill_file \{.*\} → interrupted: ")
        await term.expect(rf"cancelled · session {short}\]")
        term.type("/quit")
        await term.expect(pexpect.EOF)
    finally:
        term.child.close(force=True)
    assert term.child.exitstatus == 0
    assert fake.refusals == []


async def run_detached(*args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    """The CLI with no controlling terminal at all (as under cron or CI): a session of its own, pipes for stdio."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        env=cli_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_without_a_terminal_approvals_are_denied_at_once_unless_told(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings)
    base = ("chat", "--url", url_of(gateway), "--agent", "careful")
    fake.queue(tool_reply(pdf_call(), text="Checking."), Reply(text="Could not read it.", thinking=None))
    code, out, err = await run_detached(*base, "-", stdin=b"read the pdf skill\n")
    assert (code, out) == (0, "Checking.\nCould not read it.\n")
    assert "denied read_skill (no terminal to ask; --approve allow runs such calls)" in err
    assert re.search(r'⚙ read_skill \{"name":"pdf"\} → denied: ', err) and re.search(STATS, err)

    fake.queue(tool_reply(pdf_call()), Reply(text="Use pdftotext.", thinking=None))
    code, out, err = await run_detached(*base, "--approve", "allow", "read the pdf skill")
    assert (code, out) == (0, "Use pdftotext.\n")
    assert "allowed read_skill (--approve allow)" in err and re.search(OK_LINE, err)

    # The interactive chat fed a script on stdin: the same, and the script goes on.
    fake.queue(tool_reply(pdf_call()), Reply(text="Denied, fine.", thinking=None))
    code, out, err = await run_detached(*base, "--approve", "deny", stdin=b"read it\n/quit\n")
    assert code == 0 and "Denied, fine." in out
    assert "denied read_skill (--approve deny)" in err and "→ denied: " in err
    assert fake.refusals == []


async def test_a_piped_question_is_asked_on_the_terminal(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings
) -> None:
    """`git diff | agentspace chat -` in a terminal: stdin is the pipe, so the question goes to /dev/tty."""
    make_agent(settings)
    fake.queue(tool_reply(pdf_call()), Reply(text="Use pdftotext.", thinking=None))
    command = " ".join(
        shlex.quote(part)
        for part in (sys.executable, "-m", "gateway", "chat", "--url", url_of(gateway), "--agent", "careful", "-")
    )
    child = pexpect.spawn(
        "/bin/sh", ["-c", f"echo 'read the pdf skill' | {command}"], env=cli_env(), encoding="utf-8", timeout=20
    )
    term = Terminal.__new__(Terminal)
    term.child = child
    try:
        await term.expect(PROMPT)
        term.type("y")
        await term.expect(OK_LINE)
        await term.expect("Use pdftotext.")
        await term.expect(STATS)
        await term.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
