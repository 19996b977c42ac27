"""The Python client library for the gateway's WebSocket protocol (docs/PROTOCOL.md).

It owns the client side only: `GatewayClient` (one connection, a reader task that routes frames by `id`),
`ChatStream` (one `chat.send` and its reply), the typed errors and the small value types. It may import aiohttp and
the standard library, nothing else of `gateway`: a program that talks to a gateway loads none of the server's
dependencies (SQLAlchemy, the anthropic SDK, tiktoken). The CLI's `chat` command and the benchmark use it.
"""

from .connection import DEFAULT_URL, GatewayClient
from .errors import (
    AuthError,
    CancelledError,
    ConflictError,
    ConnectionClosedError,
    GatewayClientError,
    InvalidRequestError,
    LimitError,
    NotFoundError,
    RateLimitError,
    ServerError,
    UpstreamError,
)
from .stream import ChatStream
from .types import ChatEnd, Cost, Delta, Usage, normalize_url

__all__ = [
    "DEFAULT_URL",
    "AuthError",
    "CancelledError",
    "ChatEnd",
    "ChatStream",
    "ConflictError",
    "ConnectionClosedError",
    "Cost",
    "Delta",
    "GatewayClient",
    "GatewayClientError",
    "InvalidRequestError",
    "LimitError",
    "NotFoundError",
    "RateLimitError",
    "ServerError",
    "UpstreamError",
    "Usage",
    "normalize_url",
]
