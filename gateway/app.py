"""The application factory. No work at import; every resource is opened and closed in `cleanup_ctx`."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator

from aiohttp import WSCloseCode, web

from gateway.chat.locks import LocalSessionLocks, SessionLocks
from gateway.chat.metrics import Metrics
from gateway.chat.recovery import recover_orphans
from gateway.chat.services import Services
from gateway.chat.upstream import Upstream
from gateway.server.connection import Connection
from gateway.server.credentials import Credentials
from gateway.server.handlers import (
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
    return LocalSessionLocks()


async def services_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = create_engine(settings.db_url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow)
    upstream: Upstream | None = None
    locks: SessionLocks | None = None
    database: Database | None = None
    try:
        await upgrade_to_head(engine)
        database = Database(engine, make_sessionmaker(engine))
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
        yield
    finally:
        if upstream is not None:
            await upstream.close()
        if locks is not None:
            await locks.close()
        if database is not None:
            await database.close()
        await engine.dispose()


async def on_shutdown(app: web.Application) -> None:
    """End every stream with its terminal frame (saving what it has), then close sockets with GOING_AWAY."""
    connections: weakref.WeakSet[Connection] = app[CONNECTIONS]
    sockets: weakref.WeakSet[web.WebSocketResponse] = app[SOCKETS]
    await asyncio.gather(*(c.stop_turn("shutdown") for c in list(connections)), return_exceptions=True)
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutting down")


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_frame_bytes)
    app[SETTINGS] = settings
    sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
    connections: weakref.WeakSet[Connection] = weakref.WeakSet()
    app[SOCKETS] = sockets
    app[CONNECTIONS] = connections
    app[METRICS] = Metrics()
    app[METRICS].watch(lambda: len(sockets), lambda: active_streams(connections))
    app.cleanup_ctx.append(services_ctx)
    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/gateway", gateway_ws)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", control_ui)
    app.router.add_static("/static/", STATIC_DIR)
    return app
