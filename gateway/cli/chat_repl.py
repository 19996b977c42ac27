"""The interactive side of `agentspace chat`: a prompt, streamed replies, slash commands, Ctrl-C that cancels.

Input is read by a daemon thread with os.read (never the buffered sys.stdin, whose lock a daemon thread would still
hold at exit), so the event loop stays free: the client keeps answering pings while the user thinks, and a line or a
Ctrl-C that arrives while a reply streams is acted on at once instead of after it.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass
from typing import TextIO

from gateway.client import ChatStream, ConnectionClosedError, GatewayClient, GatewayClientError, NotFoundError

from . import chat_view as view
from .chat_tools import Approver, TurnPrinter

_EOF = object()
_SIGINT = object()
Event = str | object


@dataclass
class ChatOptions:
    session_id: str | None = None
    agent_id: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    show_thinking: bool = True
    approve: str = "ask"  # approval requests: ask on the terminal, allow, or deny (gateway/cli/chat_tools.py)


def start_line_reader(loop: asyncio.AbstractEventLoop, on_line: object, fd: int = 0) -> None:
    """Feed each line typed (or piped) on `fd` to `on_line(str)` in the loop; `on_line(None)` at end of input."""

    def deliver(line: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop already closed: nobody is listening any more
            loop.call_soon_threadsafe(on_line, line)  # type: ignore[arg-type]

    def read() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        while True:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                if pending:
                    deliver(pending)
                deliver(None)
                return
            pending += decoder.decode(chunk)
            *lines, pending = pending.split("\n")
            for line in lines:
                deliver(line)

    threading.Thread(target=read, name="chat-input", daemon=True).start()


class ChatRepl:
    def __init__(
        self, gw: GatewayClient, url: str, options: ChatOptions, out: TextIO = sys.stdout, err: TextIO = sys.stderr
    ) -> None:
        self.gw = gw
        self.url = url
        self.o = options
        self.session_id = options.session_id
        self.out, self.err = out, err
        self.style = view.Style(out)
        self.stream: ChatStream | None = None
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._armed = False  # one Ctrl-C at the prompt arms; a second one quits
        self._quit_after_reply = False
        # Piped input (a script of lines) arrives all at once: keep its lines for after the reply instead of
        # treating them as typed while it streams.
        self._interactive_input = os.isatty(0)
        self._tasks: set[asyncio.Task[object]] = set()
        self.printer: TurnPrinter | None = None
        self.approver = Approver(
            options.approve,
            err,
            typed_here=self._interactive_input,
            before_prompt=self._break_line,
            read_lines=start_line_reader,
        )

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        start_line_reader(loop, self._on_line)
        try:
            if self.session_id is not None and not await self._resume(self.session_id):
                return 1
            where = f"session {view.short_id(self.session_id)}" if self.session_id else "new session"
            self._say(self.style.dim(f"agentspace chat · {self.url} · {where} · /help for commands, Ctrl-D to quit"))
            return await self._loop()
        except ConnectionClosedError as exc:
            self._fail(exc)
            return 1
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    async def _loop(self) -> int:
        while True:
            self.out.write("> ")
            self.out.flush()
            event = await self._events.get()
            if event is _SIGINT:
                if self._armed:
                    self._say("")
                    return 0
                self._armed = True
                self._say("\n" + self.style.dim("(Ctrl-C again to quit, or /quit)"))
                continue
            self._armed = False
            if event is _EOF:
                self._say("")
                return 0
            line = str(event).strip()
            if not line:
                continue
            if line.startswith("/"):
                if not await self._command(line):
                    return 0
            else:
                await self._reply(line)
            if self._quit_after_reply:
                return 0

    # Input arrives here, in the loop, whether or not a reply is streaming.
    def _on_line(self, line: str | None) -> None:
        if self._interactive_input and self.approver.feed(line):
            return  # the answer to an approval request
        if line is None:
            self._events.put_nowait(_EOF)
            if self._streaming() and self._interactive_input:
                self._quit_after_reply = True
            return
        if not self._streaming() or not self._interactive_input:
            self._events.put_nowait(line)
            return
        word = line.strip()
        if word in ("/cancel", "/quit", "/exit"):
            self._quit_after_reply = word != "/cancel"
            self._cancel()
        elif word:
            self._note("(a reply is streaming: wait for it, or /cancel or Ctrl-C to stop it)")

    def _on_sigint(self) -> None:
        if self._streaming():
            self._cancel()
        else:
            self._events.put_nowait(_SIGINT)

    def _streaming(self) -> bool:
        return self.stream is not None and not self.stream.done

    def _cancel(self) -> None:
        if self.stream is not None:
            task: asyncio.Task[object] = asyncio.ensure_future(self.stream.cancel())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _reply(self, text: str) -> None:
        stream = self.gw.chat(
            text,
            session_id=self.session_id,
            agent_id=self.o.agent_id,
            model=self.o.model,
            max_tokens=self.o.max_tokens,
            on_approval=self.approver,
        )
        self.stream = stream
        printer = self.printer = TurnPrinter(self.out, self.err, self.o.show_thinking)
        noted = 0
        try:
            async for event in stream.events():
                for frame in stream.compactions[noted:]:  # the session was compacted before this reply
                    self._note(view.compacted_line(frame))
                noted = len(stream.compactions)
                printer.event(event)
        except ConnectionClosedError:
            raise
        except GatewayClientError as exc:
            self._say("")
            self._fail(exc)
            return
        finally:
            self.stream = None
            if stream.session_id is not None:
                self.session_id = stream.session_id
        printer.break_line()
        if stream.end is not None:
            self._note(view.stats_line(stream.end))

    def _break_line(self) -> None:
        if self.printer is not None:
            self.printer.break_line()

    async def _command(self, line: str) -> bool:
        """Run one slash command; False means quit."""
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        try:
            if name in ("/quit", "/exit"):
                return False
            if name == "/help":
                self._say(view.HELP)
            elif name == "/new":
                self.session_id = None
                self._say("new session: your next message starts it")
            elif name == "/sessions":
                self._say(view.sessions_view(await self.gw.sessions(limit=20), self.session_id))
            elif name == "/switch":
                await self._switch(arg)
            elif name == "/context":
                if self.session_id is None:
                    self._say("no session yet: send a message first")
                else:
                    self._say(view.context_view(await self.gw.inspect(self.session_id, model=self.o.model)))
            elif name == "/compact":
                if self.session_id is None:
                    self._say("no session yet: send a message first")
                else:
                    self._note("(compacting: the model is writing the summary...)")
                    frame = await self.gw.compact(self.session_id, instructions=arg or None)
                    self._say(view.compacted_line(frame))
            elif name == "/usage":
                mine = await self.gw.usage(session_id=self.session_id) if self.session_id else None
                self._say(view.usage_view(mine, await self.gw.usage()))
            elif name == "/cancel":
                self._say("nothing is streaming")
            else:
                self._say(f"unknown command {name}; /help lists them")
        except ConnectionClosedError:
            raise
        except GatewayClientError as exc:
            self._fail(exc)
        return True

    async def _switch(self, wanted: str) -> None:
        if not wanted:
            self._say("usage: /switch ID (see /sessions)")
            return
        listed = await self.gw.sessions(limit=200)
        matches = [s["sessionId"] for s in listed["sessions"] if s["sessionId"].startswith(wanted)]
        if len(matches) > 1 and wanted not in matches:
            self._say(f"{wanted} matches {len(matches)} sessions; type more of the id")
            return
        await self._resume(wanted if wanted in matches or not matches else matches[0])

    async def _resume(self, session_id: str) -> bool:
        try:
            history = await self.gw.history(session_id, limit=2)
        except NotFoundError as exc:
            self._fail(exc)
            return False
        self.session_id = session_id
        count = history.get("messageCount", 0)
        self._say(f"session {view.short_id(session_id)}: {history.get('title') or ''} ({count} messages)")
        tail = view.history_tail(history)
        if tail:
            self._say(self.style.dim(tail))
        return True

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _note(self, text: str) -> None:
        self.out.flush()
        self.err.write(self.style.dim(text) + "\n")
        self.err.flush()

    def _fail(self, exc: GatewayClientError) -> None:
        self.out.flush()
        self.err.write(self.style.red(f"error {exc.code}: {exc.message}") + "\n")
        self.err.flush()
