"""The application factory. No work at import; every resource is opened and closed in `cleanup_ctx`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
import weakref
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import WSCloseCode, web

from gateway.chat.locks import LocalSessionLocks, SessionLocks
from gateway.chat.metrics import Metrics
from gateway.chat.recovery import recover_orphans
from gateway.chat.services import Services
from gateway.chat.upstream import Upstream
from gateway.server import anthropic_api, workers
from gateway.server.connection import Connection
from gateway.server.credentials import Credentials
from gateway.server.edge import ConnectionCaps, loopback_host_only
from gateway.server.frame_guard import BufferBudget, check_aiohttp_supports_guard
from gateway.server.handlers import (
    BUFFERS,
    CAPS,
    CONNECTIONS,
    CREDENTIALS,
    METRICS,
    SERVICES,
    SOCKETS,
    STATIC_DIR,
    active_streams,
    control_ui,
    gateway_ws,
    healthz,
    metrics,
)
from gateway.settings import Settings
from gateway.store import Database, Store
from gateway.store.db import create_engine, make_sessionmaker, upgrade_to_head

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)


async def _make_locks(settings: Settings, database: Database) -> SessionLocks:
    if database.dialect == "postgresql":
        from gateway.chat.pg_locks import PgSessionLocks

        pg_locks: SessionLocks = await PgSessionLocks.open(database.engine)
        return pg_locks
    path = database.engine.url.database
    if path and path != ":memory:" and not path.startswith("file:"):
        # Other processes may serve the same file (`agentspace serve --workers N`, or a second gateway).
        from gateway.chat.file_locks import FileSessionLocks

        return await asyncio.to_thread(FileSessionLocks.beside, Path(path))
    return LocalSessionLocks()


async def services_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    private_home(settings.home)
    engine = create_engine(
        settings.db_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        sqlite_synchronous=settings.sqlite_synchronous,
    )
    upstream: Upstream | None = None
    services: Services | None = None
    locks: SessionLocks | None = None
    database: Database | None = None
    switch_interval = sys.getswitchinterval()
    if settings.gil_switch_ms > 0:
        sys.setswitchinterval(settings.gil_switch_ms / 1000)
    try:
        await upgrade_to_head(engine)
        database = Database(engine, make_sessionmaker(engine), sqlite_synchronous=settings.sqlite_synchronous)
        for sync_engine in database.sync_engines:
            app[METRICS].watch_engine(sync_engine)
        store = Store(database, settings.clock)
        locks = await _make_locks(settings, database)
        recovered = await recover_orphans(store, locks)
        if recovered:
            log.warning("marked %d replies interrupted by a process that died while streaming them", recovered)
        services = Services.build(settings, store, locks, metrics=app[METRICS])
        upstream = services.upstream
        app[SERVICES] = services
        app[CREDENTIALS] = Credentials(settings.token, store.keys)
        # Loading the encoding takes a moment; do it off the loop, before the first inspect pays for it.
        await asyncio.to_thread(services.tokens.warm)
        private = workers.worker_ctx_for(settings, app[METRICS])
        async with workers.serving_private(settings, private) if private else contextlib.nullcontext():
            yield
    finally:
        if services is not None:
            await services.held.close()  # one last try for replies held through an outage, while the store is open
            await services.tools.close()  # MCP servers: stdio processes end, HTTP sessions are closed
            await services.budgets.close()  # the lease renewer; rows still held end with their lease
        if upstream is not None:
            await upstream.close()
        if locks is not None:
            await locks.close()
        if database is not None:
            await database.close()
        await engine.dispose()
        sys.setswitchinterval(switch_interval)


async def prepare_to_serve(app: web.Application) -> None:
    """What `agentspace serve` (each worker) does once the gateway has started, and an app built for a test need not:
    these are choices for a long-running process.

    The SDK client is built now, not in the first turn, which used to wait ~0.1 s for its TLS context and transport.
    Then what exists (modules, SQLAlchemy's tables and compiled statements, the token encoding, the prices) lives as
    long as the process, so the cyclic garbage collector stops walking it (gc.freeze). Issue 15: with 256,000 such
    objects, each full collection at 200 streams held the event loop for up to 190 ms, and GC took ~12 % of the
    gateway's CPU; frozen, a full collection walks only what the turns create."""
    services = app.get(SERVICES)
    if services is not None and services.upstream.has_key():
        services.upstream.client()
    gc.collect()
    gc.freeze()


async def on_shutdown(app: web.Application) -> None:
    """End every stream with its terminal frame (saving what it has), then close sockets with GOING_AWAY."""
    connections: weakref.WeakSet[Connection] = app[CONNECTIONS]
    sockets: weakref.WeakSet[web.WebSocketResponse] = app[SOCKETS]
    await asyncio.gather(*(c.stop_turn("shutdown") for c in list(connections)), return_exceptions=True)
    # Turns whose client left while they waited on tools or an approval belong to no connection.
    services = app.get(SERVICES)
    orphans = [t for t in services.live_turns.values() if t.task is not None and not t.task.done()] if services else []
    for turn in orphans:
        turn.cancel_reason = "shutdown"
        turn.task.cancel()
    if orphans:
        await asyncio.wait({t.task for t in orphans})
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutting down")


def private_home(home: Path) -> None:
    """The home holds the database, the key vault and the token: created 0700, and a wider one is reported."""
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = home.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s is open to other users (mode %o); `chmod 700 %s` keeps them out of its files", home, mode, home)


def create_app(settings: Settings) -> web.Application:
    check_aiohttp_supports_guard()
    app = web.Application(
        client_max_size=settings.max_frame_bytes,
        middlewares=[loopback_host_only(lambda: app[CREDENTIALS].required())],
        # aiohttp's keep-alive timer runs from the moment a connection is accepted: a socket that has not completed
        # a request by then (silent, or dribbling its headers) is closed. It was 75 s (run_app's default).
        handler_args={"keepalive_timeout": settings.handshake_timeout_s},
    )
    app[SETTINGS] = settings
    sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
    connections: weakref.WeakSet[Connection] = weakref.WeakSet()
    app[SOCKETS] = sockets
    app[CONNECTIONS] = connections
    app[CAPS] = ConnectionCaps(settings.max_connections, settings.max_connections_per_address)
    app[BUFFERS] = BufferBudget(settings.max_buffered_bytes)
    app[METRICS] = Metrics()
    app[METRICS].watch(lambda: len(sockets), lambda: active_streams(connections))
    app.cleanup_ctx.append(services_ctx)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/gateway", gateway_ws)
    app.router.add_get("/metrics", metrics)
    anthropic_api.add_routes(app)
    app.router.add_get("/", control_ui)
    app.router.add_static("/static/", STATIC_DIR)
    return app
