"""`agentspace chat`: talk to a running gateway from the terminal.

With a message, it answers once and exits, made for pipes: only the answer goes to stdout, the stats line and any
error to stderr, and the exit code says how it went (0 answered, 1 an error, 130 cancelled with Ctrl-C).
Without one, it is an interactive chat (gateway/cli/chat_repl.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from typing import Any

from gateway.client import AuthError, GatewayClient, GatewayClientError
from gateway.settings import Settings

from . import chat_view as view
from . import runtime_file
from .chat_repl import ChatOptions, ChatRepl, start_line_reader
from .chat_tools import APPROVE_MODES, Approver, TurnPrinter


def register(sub: Any) -> None:
    parser = sub.add_parser("chat", help="chat with a running gateway, or ask one question and print the answer")
    parser.add_argument("message", nargs="?", help="ask this once, print the answer and exit ('-' reads stdin)")
    parser.add_argument("--session", metavar="ID", help="continue this session")
    parser.add_argument("--agent", metavar="NAME", help="the agent for a new session (default: default)")
    parser.add_argument("--model", help="model for this chat (default: the agent's, else the gateway's)")
    parser.add_argument("--max-tokens", type=int, metavar="N", help="max_tokens per reply")
    parser.add_argument(
        "--url",
        help="the gateway (default: the one ~/.config/agentspace/runtime.json names, else"
        " ws://$AGENTSPACE_HOST:$AGENTSPACE_PORT/gateway)",
    )
    parser.add_argument("--token", help="the gateway token (default: AGENTSPACE_TOKEN, else $AGENTSPACE_HOME/token)")
    parser.add_argument("--no-thinking", action="store_true", help="do not show the model's thinking")
    parser.add_argument(
        "--approve",
        choices=APPROVE_MODES,
        default="ask",
        help="tool calls that need approval: ask y/n/always on the terminal (denied when there is none; the"
        " default), allow each once, or deny each",
    )
    parser.set_defaults(handler=run)


def default_url(settings: Settings) -> str:
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"ws://{host}:{settings.port}/gateway"


def gateway_url(settings: Settings) -> str:
    """A running gateway's discovery file first (as the original CLI found its gateway), then the settings."""
    running = runtime_file.discover(settings.runtime_file)
    return running.url if running is not None else default_url(settings)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    url = args.url or gateway_url(settings)
    token = args.token or settings.token
    options = ChatOptions(
        session_id=args.session,
        agent_id=args.agent,
        model=args.model,
        max_tokens=args.max_tokens,
        show_thinking=not args.no_thinking,
        approve=args.approve,
    )
    if args.message is None:
        return asyncio.run(_interactive(url, token, options))
    message = sys.stdin.read() if args.message == "-" else args.message
    if not message.strip():
        print("agentspace: the message is empty", file=sys.stderr)
        return 2
    return asyncio.run(ask_once(url, token, message, options))


async def _interactive(url: str, token: str | None, options: ChatOptions) -> int:
    try:
        async with GatewayClient.connect(url, token) as gw:
            return await ChatRepl(gw, url, options).run()
    except GatewayClientError as exc:
        _complain(exc)
        return 1


async def ask_once(url: str, token: str | None, message: str, options: ChatOptions) -> int:
    loop = asyncio.get_running_loop()
    interrupted = False
    tasks: set[asyncio.Task[bool]] = set()
    printer = TurnPrinter(sys.stdout, sys.stderr, show_thinking=False)
    approver = Approver(
        options.approve, sys.stderr, typed_here=False, before_prompt=printer.break_line, read_lines=start_line_reader
    )
    try:
        async with GatewayClient.connect(url, token) as gw:
            stream = gw.chat(
                message,
                session_id=options.session_id,
                agent_id=options.agent_id,
                model=options.model,
                max_tokens=options.max_tokens,
                on_approval=approver,
            )

            def on_sigint() -> None:
                nonlocal interrupted
                interrupted = True
                tasks.add(asyncio.ensure_future(stream.cancel()))

            loop.add_signal_handler(signal.SIGINT, on_sigint)
            try:
                async for event in stream.events():
                    printer.event(event)
            finally:
                loop.remove_signal_handler(signal.SIGINT)
    except BrokenPipeError:
        # The reader (`| head`) has had enough. Point stdout at /dev/null so the exit flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except GatewayClientError as exc:
        printer.break_line()
        _complain(exc)
        return 1
    printer.break_line()
    if stream.end is not None:
        print(view.stats_line(stream.end), file=sys.stderr)
    return 130 if interrupted else 0


def _complain(exc: GatewayClientError) -> None:
    print(f"agentspace: {exc}", file=sys.stderr)
    if isinstance(exc, AuthError):
        print(
            "agentspace: this gateway needs its token or a key (agentspace token create --name NAME):"
            " --token, AGENTSPACE_TOKEN or $AGENTSPACE_HOME/token",
            file=sys.stderr,
        )
