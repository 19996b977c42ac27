"""`agentspace token create|remove`: the single gateway token, kept in `$AGENTSPACE_HOME/token`; and, with `--name`,
`list`, `revoke` and `budget`, named keys (gateway/cli/token_keys.py). Clients may present either."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from gateway.settings import Settings, token_problem

from . import token_keys

# 32 random bytes: far beyond guessing, and URL-safe so it fits a header, a query string or a config file as is.
TOKEN_BYTES = 32


def register(sub: Any) -> None:
    parser = sub.add_parser("token", help="manage the gateway token and named keys clients present")
    token_sub = parser.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser(
        "create", help="generate the gateway token (stored mode 0600), or with --name a named key; printed once"
    )
    create.add_argument("--name", help="make a named key instead, stored hashed, with its own usage and caps")
    token_keys.add_cap_options(create)
    create.add_argument("--force", action="store_true", help="replace an existing token (old clients stop working)")
    create.set_defaults(handler=create_token)
    remove = token_sub.add_parser("remove", help="delete the stored token")
    remove.set_defaults(handler=remove_token)
    token_keys.register(token_sub)


def write_token(path: Path, token: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    # Created 0600 from the start, so the token is never readable by others, not even for a moment.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def create_token(args: argparse.Namespace) -> int:
    if getattr(args, "name", None) is not None:
        return token_keys.create_named(args)
    if getattr(args, "daily_usd", None) is not None or getattr(args, "monthly_usd", None) is not None:
        print("agentspace: caps belong to named keys: add --name NAME", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    path = settings.token_path
    if path.exists() and not args.force:
        print(f"agentspace: a token already exists in {path}; use --force to replace it", file=sys.stderr)
        return 1
    token = secrets.token_urlsafe(TOKEN_BYTES)
    while token_problem(token) is not None:  # 43 characters of 32 random bytes: in practice never taken twice
        token = secrets.token_urlsafe(TOKEN_BYTES)
    write_token(path, token)
    # Printed once, here, so the user can hand it to clients; it is never logged or shown again.
    print(token)
    print(f"stored in {path} (mode 0600); clients send it as `Authorization: Bearer <token>`", file=sys.stderr)
    if os.environ.get("AGENTSPACE_TOKEN"):
        print("note: AGENTSPACE_TOKEN is set and takes precedence over this file", file=sys.stderr)
    return 0


def remove_token(args: argparse.Namespace) -> int:
    path = Settings.from_env().token_path
    try:
        path.unlink()
    except FileNotFoundError:
        print(f"no token stored in {path}", file=sys.stderr)
        return 1
    print(f"removed {path}")
    return 0
