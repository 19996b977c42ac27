"""HTTP and WebSocket endpoints, kept thin: check who may connect, then hand frames to the Connection."""

from __future__ import annotations

import asyncio
import hmac
import logging
import weakref
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from . import errors
from .connection import Connection
from .protocol import dump, error_frame
from .services import Services

log = logging.getLogger(__name__)

SERVICES = web.AppKey("services", Services)
SOCKETS = web.AppKey[weakref.WeakSet[web.WebSocketResponse]]("sockets")
CONNECTIONS = web.AppKey[weakref.WeakSet[Connection]]("connections")

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


def token_ok(expected: str | None, given: str | None) -> bool:
    if expected is None:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """Browsers always send Origin; other clients usually don't. A page from elsewhere must not drive the gateway."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin in allowed:
        return True
    own = f"{request.scheme}://{request.host}"
    return origin == own


async def healthz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    return web.json_response(
        {
            "status": "ok",
            "database": services.store.database.dialect,
            "activeStreams": sum(1 for c in request.app[CONNECTIONS] if c.turn_task and not c.turn_task.done()),
            "connections": len(request.app[SOCKETS]),
            "apiKeyConfigured": services.upstream.has_key(),
        }
    )


async def gateway_ws(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    settings = services.settings
    if not origin_allowed(request, settings.allowed_origins):
        log.warning("refused a WebSocket upgrade from origin %s", request.headers.get("Origin"))
        raise web.HTTPForbidden(text="origin not allowed")
    header_token = _bearer(request)
    if header_token is not None and not token_ok(settings.token, header_token):
        raise web.HTTPUnauthorized(text="wrong gateway token")
    ws = web.WebSocketResponse(
        heartbeat=settings.heartbeat_s or None,
        max_msg_size=settings.max_frame_bytes,
    )
    await ws.prepare(request)
    authenticated = settings.token is None or header_token is not None
    connection = Connection(ws, services, authenticated=authenticated)
    request.app[SOCKETS].add(ws)
    request.app[CONNECTIONS].add(connection)
    auth_deadline = None if authenticated else asyncio.get_running_loop().time() + settings.auth_timeout_s
    try:
        while True:
            timeout = None
            if auth_deadline is not None and not connection.authenticated:
                timeout = max(0.0, auth_deadline - asyncio.get_running_loop().time())
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"authentication required")
                break
            if msg.type == WSMsgType.TEXT:
                await connection.handle_text(msg.data)
                if not connection.authenticated:
                    # The first frame of an unauthenticated connection must be a good `auth`; anything else ends it.
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"authentication required")
                    break
            elif msg.type == WSMsgType.BINARY:
                await connection.send(
                    error_frame(errors.InvalidMessage("binary frames are not accepted; send JSON text"), None)
                )
            elif msg.type == WSMsgType.ERROR:
                await _report_socket_error(connection, ws)
                break
            else:  # CLOSE, CLOSING, CLOSED
                break
    finally:
        await connection.close()
        request.app[SOCKETS].discard(ws)
    return ws


async def _report_socket_error(connection: Connection, ws: web.WebSocketResponse) -> None:
    exc: Any = ws.exception()
    if exc is not None and "size" in str(exc).lower():
        frame = error_frame(errors.MessageTooLarge(f"frame too large: {exc}"), None)
        connection.gone = False
        try:
            await ws.send_str(dump(frame))
        except (ConnectionError, RuntimeError):
            pass
    log.info("socket error: %s", exc)
