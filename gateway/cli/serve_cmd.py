"""`agentspace serve`: run the gateway until SIGINT/SIGTERM, then end streams cleanly and exit 0."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from typing import Any

from aiohttp import web

from gateway.server.logs import setup_logging
from gateway.settings import Settings

MIN_TOKEN_CHARS = 16


def register(sub: Any) -> None:
    parser = sub.add_parser("serve", help="start the gateway")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1, or AGENTSPACE_HOST)")
    parser.add_argument("--port", type=int, help="port (default 3271, or AGENTSPACE_PORT)")
    parser.add_argument("--log-format", choices=("text", "json"), help="log line format")
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
    settings = settings.with_overrides(**overrides)
    if not is_loopback(settings.host) and settings.token is None:
        # Anyone who can reach the port could spend the API key and read every conversation.
        print(
            f"agentspace: refusing to bind {settings.host} without a gateway token; "
            "set AGENTSPACE_TOKEN (or run `agentspace token create`)",
            file=sys.stderr,
        )
        return 2
    setup_logging(settings.log_format, settings.log_level)
    log = logging.getLogger("gateway")
    if settings.token is not None and len(settings.token) < MIN_TOKEN_CHARS:
        log.warning(
            "the gateway token is shorter than %d characters; `agentspace token create` makes a strong one",
            MIN_TOKEN_CHARS,
        )
    log.info(
        "gateway on ws://%s:%d/gateway (Control UI http://%s:%d/), database %s",
        settings.host,
        settings.port,
        settings.host,
        settings.port,
        _safe_url(settings.db_url),
    )
    # Imported here, not at the top: the server pulls in the SDK and SQLAlchemy (seconds), which `agentspace chat`
    # and the other small commands never need.
    from gateway.app import create_app

    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        shutdown_timeout=10,
        print=None,
        access_log=None,
    )
    return 0


def _safe_url(url: str) -> str:
    """The database URL without its password, fit for a log line."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
