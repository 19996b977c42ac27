"""`agentspace serve`: run the gateway until SIGINT/SIGTERM, then end streams cleanly and exit 0."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.server.logs import setup_logging
from gateway.settings import Settings, token_problem

from . import runtime_file
from .workers import Supervisor, worker_count


def register(sub: Any) -> None:
    parser = sub.add_parser("serve", help="start the gateway")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1, or AGENTSPACE_HOST)")
    parser.add_argument("--port", type=int, help="port (default 3271, or AGENTSPACE_PORT)")
    parser.add_argument("--log-format", choices=("text", "json"), help="log line format")
    parser.add_argument(
        "--workers",
        metavar="N",
        default=os.environ.get("AGENTSPACE_WORKERS", "1"),
        help="gateway processes on the one port: a number, or auto for one per core (default 1, or AGENTSPACE_WORKERS)",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--runtime-file",
        metavar="PATH",
        type=Path,
        help="write the discovery file here (default ~/.config/agentspace/runtime.json, or AGENTSPACE_RUNTIME_FILE)",
    )
    where.add_argument("--no-runtime-file", action="store_true", help="write no discovery file")
    parser.set_defaults(handler=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    overrides: dict[str, object] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.log_format:
        overrides["log_format"] = args.log_format
    named: Path | None = getattr(args, "runtime_file", None)
    if named is not None:
        overrides.update(runtime_file=named.expanduser(), runtime_file_forced=True)
    if getattr(args, "no_runtime_file", False):
        overrides["runtime_file"] = None
    settings = settings.with_overrides(**overrides)
    if not is_loopback(settings.host) and settings.token is None:
        # Anyone who can reach the port could spend the API key and read every conversation.
        print(
            f"agentspace: refusing to bind {settings.host} without a gateway token; "
            "set AGENTSPACE_TOKEN (or run `agentspace token create`)",
            file=sys.stderr,
        )
        return 2
    weakness = token_problem(settings.token) if settings.token is not None else None
    if weakness is not None:
        # A short token is guessed across connections (the attempts are not limited per address).
        print(
            f"agentspace: the gateway token is too weak: {weakness}; `agentspace token create` makes a strong one",
            file=sys.stderr,
        )
        return 2
    try:
        workers = worker_count(str(args.workers))
    except ValueError as exc:
        print(f"agentspace: {exc}", file=sys.stderr)
        return 2
    if workers > 1 and settings.is_sqlite and _in_memory(settings.db_url):
        print("agentspace: --workers needs a database file or PostgreSQL (each worker would get its own memory)",
              file=sys.stderr)  # fmt: skip
        return 2
    # Everything this process creates (the database, its WAL, anything else) is for its owner only.
    os.umask(0o077)
    setup_logging(settings.log_format, settings.log_level)
    log = logging.getLogger("gateway")
    try:
        # Bound here, not by run_app, so the discovery file can name the port actually listened on (also for 0).
        sock = _listen(settings.host, settings.port)
    except OSError as exc:
        print(f"agentspace: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    port = int(sock.getsockname()[1])
    log.info(
        "gateway on ws://%s:%d/gateway (Control UI http://%s:%d/), database %s%s",
        settings.host,
        port,
        settings.host,
        port,
        _safe_url(settings.db_url),
        f", {workers} workers" if workers > 1 else "",
    )
    # Imported here, not at the top: the server pulls in the SDK and SQLAlchemy (seconds), which `agentspace chat`
    # and the other small commands never need.
    from gateway.app import create_app, prepare_to_serve

    discovery = _discovery_path(settings, log)
    claimed = discovery is not None and runtime_file.claim(discovery, port, settings.host, settings.clock.now())
    try:
        if workers > 1:
            return Supervisor(settings, sock, workers, create_app, prepare_to_serve).run()
        app = create_app(settings)
        app.on_startup.append(prepare_to_serve)  # after the app's own start-up
        web.run_app(app, sock=sock, shutdown_timeout=10, print=None, access_log=None)
    finally:
        if claimed and discovery is not None:
            runtime_file.release(discovery)
    return 0


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host.strip("[]"), port), family=family, backlog=128)


def _discovery_path(settings: Settings, log: logging.Logger) -> Path | None:
    """Where to write the discovery file, if anywhere. A gateway on PostgreSQL may be one of several sharing the
    database (docs/DEPLOY.md), and one file cannot name them all: it writes one only when asked by name."""
    path = settings.runtime_file
    if path is None:
        return None
    if not settings.is_sqlite and not settings.runtime_file_forced:
        log.info("no discovery file: the database may be shared; set AGENTSPACE_RUNTIME_FILE to write one anyway")
        return None
    return path


def _in_memory(url: str) -> bool:
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    return not database or database == ":memory:" or "mode=memory" in url


def _safe_url(url: str) -> str:
    """The database URL without its password, fit for a log line."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
