"""`agentspace` command line: one subcommand per module in this package.

The top of the import order: it may import anything in `gateway` (the app factory for `serve`, the store for
`usage` and `db copy`, the client library for `chat`); nothing imports it but `gateway.__main__`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import bench_cmd, chat_cmd, context_cmd, db_cmd, keys_cmd, prices_cmd, serve_cmd, token_cmd, usage_cmd

COMMANDS = (serve_cmd, chat_cmd, keys_cmd, prices_cmd, token_cmd, context_cmd, usage_cmd, bench_cmd, db_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentspace", description="AgentSpace Gateway: a persistent LLM gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # parse_known_args: a pass-through command (bench) takes options its own parser never declared.
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        if not getattr(args, "passthrough", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.args = [*args.args, *unknown]
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        print(f"agentspace: {exc}", file=sys.stderr)
        return 2
