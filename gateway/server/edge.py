"""Who may open what, before any frame: the loopback Host rule on every HTTP endpoint, and caps on WebSocket
connections in total and per peer address."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.server.api_errors import error_response

log = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
RETRY_AFTER_S = 1


def is_loopback_name(host: str) -> bool:
    name = host[: host.find("]") + 1] if host.startswith("[") else host.rsplit(":", 1)[0]
    return name.lower() in LOOPBACK_HOSTS


def loopback_host_only(credentials_required: Callable[[], Awaitable[bool]]) -> Middleware:
    """Without credentials (no gateway token, no named key), every request must name a loopback host. A web page
    that rebinds its own DNS name to 127.0.0.1 reaches the port as same-origin, but its requests say
    `Host: evil.example`: refused here, for every endpoint (HTTP and WebSocket, present and future), before any
    handler runs. With credentials, they decide. Loopback names, the usual case, cost nothing."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not is_loopback_name(request.host) and not await credentials_required():
            log.warning("refused a request for host %r: not a loopback name, and no credential is set", request.host)
            why = "host not allowed: without a token the gateway answers only to loopback names"
            if request.path.startswith("/v1/"):
                # An SDK app reads Anthropic's error shape; plain text would surface as an unparseable body.
                return error_response(403, "permission_error", why)
            raise web.HTTPForbidden(text=why)
        return await handler(request)

    return middleware


class ConnectionCaps:
    """Open WebSockets in total and per peer address. A slot is taken before the upgrade and given back when the
    socket closes; beyond a cap the upgrade is refused with 503 (total) or 429 (this address) and Retry-After."""

    def __init__(self, total: int, per_address: int) -> None:
        self.total = total
        self.per_address = per_address
        self._open: Counter[str] = Counter()
        self.count = 0

    def take(self, address: str) -> None:
        if self.total > 0 and self.count >= self.total:
            raise web.HTTPServiceUnavailable(
                text=f"the gateway has {self.count} connections, its limit; retry shortly",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        if self.per_address > 0 and self._open[address] >= self.per_address:
            raise web.HTTPTooManyRequests(
                text=f"{self._open[address]} connections from this address, the limit; close some first",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self._open[address] += 1
        self.count += 1

    def give(self, address: str) -> None:
        self.count -= 1
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]
