"""HTTP and WebSocket endpoints, kept thin: check who may connect, then hand frames to the Connection."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterable
from pathlib import Path

from aiohttp import WSCloseCode, WSMsgType, web

from gateway.chat.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from gateway.chat.metrics import Metrics
from gateway.chat.services import Services

from . import workers
from .connection import Connection
from .credentials import Credentials
from .edge import ConnectionCaps, is_loopback_name
from .frame_guard import BufferBudget, FrameGuard, GuardedWebSocketResponse, GuardLimits

log = logging.getLogger(__name__)

SERVICES = web.AppKey("services", Services)
SOCKETS = web.AppKey[weakref.WeakSet[web.WebSocketResponse]]("sockets")
CONNECTIONS = web.AppKey[weakref.WeakSet[Connection]]("connections")
METRICS = web.AppKey("metrics", Metrics)
CREDENTIALS = web.AppKey("credentials", Credentials)
# How long a close waits for the peer's own close frame: a peer that never answers (an attacker, a dead link) must
# not hold its socket 10 s more (aiohttp's default) after the gateway has decided to close it.
CLOSE_WAIT_S = 2.0
CAPS = web.AppKey("connection_caps", ConnectionCaps)
BUFFERS = web.AppKey("buffer_budget", BufferBudget)
STATIC_DIR = Path(__file__).parent / "static"


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return None


def origin_allowed(request: web.Request, allowed: tuple[str, ...], *, has_token: bool) -> bool:
    """Browsers always send Origin; other clients usually don't. A page from elsewhere must not drive the gateway."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    if origin in allowed:
        return True
    if origin != f"{request.scheme}://{request.host}":
        return False
    # The gateway's own origin. Without a token, also insist the page was loaded by a loopback name: a rebound DNS
    # name (evil.example -> 127.0.0.1) makes a hostile page look same-origin, but its Host header gives it away.
    return has_token or is_loopback_name(request.host)


def read_limit(max_frame_bytes: int) -> int:
    """What aiohttp may read of one frame. A bit above our own limit, so a frame slightly too large still gets an
    error frame from us (and the connection lives on); beyond this aiohttp closes the socket with 1009."""
    return max_frame_bytes + max(64 * 1024, max_frame_bytes // 4)


def active_streams(connections: Iterable[Connection]) -> int:
    return sum(1 for c in connections if c.turn_task and not c.turn_task.done())


async def healthz(request: web.Request) -> web.Response:
    services = request.app[SERVICES]
    connections = request.app[CONNECTIONS]
    return web.json_response(
        {
            "status": "ok",
            "database": services.store.database.dialect,
            "activeStreams": active_streams(connections),
            "connections": len(request.app[SOCKETS]),
            "apiKeyConfigured": services.upstream.has_key(),
            # Under `serve --workers N`, which worker answered (each connection goes to one of them).
            **({"worker": services.settings.worker} if services.settings.worker is not None else {}),
        }
    )


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format. Behind the gateway token or a key when the gateway has one (a bearer token)."""
    verdict = await request.app[CREDENTIALS].check(_bearer(request))
    if not verdict.accepted:
        raise web.HTTPUnauthorized(text="gateway token required", headers={"WWW-Authenticate": "Bearer"})
    settings = request.app[SERVICES].settings
    if settings.worker is not None:
        body = await workers.gather(settings, request.app[METRICS])  # every worker's, labelled
    else:
        body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


# The Control UI is same-origin and static; this policy keeps anything injected from loading or sending elsewhere.
_UI_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def control_ui(request: web.Request) -> web.FileResponse:
    """The Control UI page. It asks for the gateway token itself when the gateway closes its socket with 1008."""
    return web.FileResponse(STATIC_DIR / "index.html", headers=_UI_HEADERS)


async def gateway_ws(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    settings = services.settings
    if not origin_allowed(request, settings.allowed_origins, has_token=settings.token is not None):
        log.warning("refused a WebSocket upgrade from origin %r", request.headers.get("Origin"))
        raise web.HTTPForbidden(text="origin not allowed")
    header_token = _bearer(request)
    credentials = request.app[CREDENTIALS]
    verdict = await credentials.check(header_token) if header_token is not None else None
    if verdict is not None and not verdict.accepted:
        raise web.HTTPUnauthorized(text=verdict.reason)
    # Decided before the upgrade: once prepared, the connection is registered without a pause.
    authenticated = verdict is not None or not await credentials.required()
    address = request.remote or "unknown"
    caps = request.app[CAPS]
    caps.take(address)  # 503 or 429 beyond the caps, before any WebSocket exists
    try:
        limits = GuardLimits(settings.preauth_bytes, read_limit(settings.max_frame_bytes), settings.frame_timeout_s)
        ws = GuardedWebSocketResponse(
            budget=request.app[BUFFERS],
            limits=limits,
            authenticated=authenticated,
            heartbeat=settings.heartbeat_s or None,
            timeout=CLOSE_WAIT_S,
            # No permessage-deflate: a compressed frame's header says nothing of what it inflates to, and the guard
            # judges frames by their headers.
            compress=False,
        )
        await ws.prepare(request)
        assert ws.guard is not None
        key = verdict.key if verdict is not None else None
        connection = Connection(
            ws, services, authenticated=authenticated, credentials=credentials, key=key, guard=ws.guard
        )
        request.app[SOCKETS].add(ws)
        request.app[CONNECTIONS].add(connection)
        try:
            await _serve(ws, ws.guard, connection, settings.auth_timeout_s)
        finally:
            ws.guard.close()
            await connection.close()
            request.app[SOCKETS].discard(ws)
    finally:
        caps.give(address)
    return ws


async def _serve(ws: web.WebSocketResponse, guard: FrameGuard, connection: Connection, auth_timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    auth_deadline = None if connection.authenticated else loop.time() + auth_timeout_s
    while True:
        timeout = None
        if auth_deadline is not None and not connection.authenticated:
            # Never 0: aiohttp reads a zero timeout as "no timeout".
            timeout = max(0.001, auth_deadline - loop.time())
        try:
            msg = await ws.receive(timeout=timeout)
        except TimeoutError:
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"authentication required")
            return
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            arrival = guard.next_arrival()
            try:
                await connection.handle_frame(msg.data, arrival)
            finally:
                guard.done(arrival)
            if not connection.authenticated:
                # The first frame of an unauthenticated connection must be a good `auth`; anything else ends it.
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"authentication required")
                return
        elif msg.type == WSMsgType.ERROR:
            # aiohttp or the frame guard has closed the socket: 1009 for a frame over the limit (or anything over a
            # few KB before auth), 1013 when the gateway holds too much unread data, 1008 for a frame not completed
            # in time, 1006 for a dead peer.
            log.info("socket closed on error: %s", ws.exception() or msg.data)
            return
        else:  # CLOSE, CLOSING, CLOSED
            return
