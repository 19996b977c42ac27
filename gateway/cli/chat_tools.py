"""`agentspace chat` and the tool loop: a reply's events printed (text on stdout, one line per tool call on stderr),
and approval requests answered y/n/always on the terminal, or by `--approve`.

Where the answer comes from: in the interactive chat on a terminal, the next line typed; otherwise (a one-shot
question, or lines piped into the chat) the controlling terminal, /dev/tty, as ssh and sudo ask for a password when
stdin is a pipe. With no terminal at all (cron, CI, `setsid`), an approval is denied at once with a line on stderr
saying so, rather than left to hang the turn until it expires; `--approve allow` or `deny` answers without asking.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import TextIO

from gateway.client import ApprovalRequest, Decision, Delta, StepEnd, ToolCall, ToolResult

from . import chat_view as view

APPROVE_MODES = ("ask", "allow", "deny")
ANSWERS: dict[str, Decision] = {
    "y": "allow_once",
    "yes": "allow_once",
    "n": "deny",
    "no": "deny",
    "": "deny",
    "a": "allow_session",
    "always": "allow_session",
}
LineReader = Callable[[asyncio.AbstractEventLoop, Callable[[str | None], None], int], None]


class TurnPrinter:
    """One reply's events: text (and thinking, dimmed, when shown) to `out`, a line per tool call to `err`."""

    def __init__(self, out: TextIO, err: TextIO, show_thinking: bool) -> None:
        self.out, self.err = out, err
        self.style = view.Style(out)
        self.err_style = view.Style(err)
        self.show_thinking = show_thinking
        self.calls: dict[str, ToolCall] = {}
        self.wrote = ""  # the last text written to `out`
        self.text = ""  # all of the answer's text
        self._thinking = False
        self._new_step = False

    def event(self, event: object) -> None:
        if isinstance(event, Delta):
            self._delta(event)
        elif isinstance(event, ToolCall):
            self.calls[event.tool_use_id] = event
        elif isinstance(event, ToolResult):
            self.break_line()
            call = self.calls.get(event.tool_use_id)
            self.err.write(self.err_style.dim(view.tool_line(call, event)) + "\n")
            self.err.flush()
        elif isinstance(event, StepEnd):
            self._new_step = True

    def _delta(self, delta: Delta) -> None:
        if delta.is_thinking:
            if self.show_thinking:
                if not self._thinking:
                    self.break_line()
                self._thinking = True
                self._write(self.style.dim(delta.text), delta.text)
            return
        if self._thinking:
            self._write("\n\n", "\n\n")
            self._thinking = False
        elif self._new_step and self.text and not self.wrote.endswith("\n"):
            self._write("\n", "\n")  # the text of the next step starts a line of its own
        self._new_step = False
        self.text += delta.text
        self._write(delta.text, delta.text)

    def _write(self, styled: str, plain: str) -> None:
        self.out.write(styled)
        self.out.flush()
        self.wrote = plain

    def break_line(self) -> None:
        """End the line `out` is in the middle of, so that what goes to `err` starts on its own line."""
        if self.wrote and not self.wrote.endswith("\n"):
            self._write("\n", "\n")


class Approver:
    """The chat's `on_approval` handler. `feed(line)` hands it a typed line; it says whether it took it."""

    def __init__(
        self,
        mode: str,
        err: TextIO,
        *,
        typed_here: bool,
        before_prompt: Callable[[], None] = lambda: None,
        read_lines: LineReader | None = None,
        terminal: str = "/dev/tty",
    ) -> None:
        self.mode = mode
        self.err = err
        self.style = view.Style(err)
        # True: the chat's own input is a terminal and passes lines on through feed(); else open `terminal`.
        self.typed_here = typed_here
        self.before_prompt = before_prompt
        self.read_lines = read_lines
        self.terminal = terminal
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._opened: bool | None = None  # whether the terminal could be opened (None: not tried yet)
        self._turn = asyncio.Lock()  # one question at a time
        self.asking = False

    def feed(self, line: str | None) -> bool:
        if not self.asking:
            return False
        self._lines.put_nowait(line)
        return True

    async def __call__(self, request: ApprovalRequest) -> Decision | None:
        if self.mode == "allow":
            self._say(f"allowed {request.name} (--approve allow)")
            return "allow_once"
        if self.mode == "deny" or not self._can_ask():
            why = "--approve deny" if self.mode == "deny" else "no terminal to ask; --approve allow runs such calls"
            self._say(f"denied {request.name} ({why})")
            return "deny"
        async with self._turn:
            return await self._ask(request)

    async def _ask(self, request: ApprovalRequest) -> Decision:
        self.before_prompt()
        while not self._lines.empty():
            self._lines.get_nowait()  # typed before the question was asked
        self.asking = True
        try:
            self.err.write(self.style.bold(view.approval_prompt(request)))
            self.err.flush()
            while True:
                line = await self._lines.get()
                if line is None:
                    self.err.write("\n")
                    return "deny"
                answer = ANSWERS.get(line.strip().lower())
                if answer is not None:
                    return answer
                self.err.write(self.style.bold("answer y (allow once), n (deny) or always (allow for this session): "))
                self.err.flush()
        except asyncio.CancelledError:
            # Decided elsewhere, expired, or the turn was cancelled: the result line tells which.
            self.err.write(self.style.dim("(no longer waiting)") + "\n")
            self.err.flush()
            raise
        finally:
            self.asking = False

    def _can_ask(self) -> bool:
        if self.typed_here:
            return True
        if self._opened is None:
            self._opened = self._open_terminal()
        return self._opened

    def _open_terminal(self) -> bool:
        if self.read_lines is None:
            return False
        try:
            fd = os.open(self.terminal, os.O_RDONLY | os.O_NOCTTY)
        except OSError:
            return False
        self.read_lines(asyncio.get_running_loop(), self.feed_from_terminal, fd)
        return True

    def feed_from_terminal(self, line: str | None) -> None:
        if line is None:
            self._opened = False  # the terminal is gone: later requests are denied without asking
        self.feed(line)

    def _say(self, text: str) -> None:
        self.before_prompt()
        self.err.write(self.style.dim(text) + "\n")
        self.err.flush()
