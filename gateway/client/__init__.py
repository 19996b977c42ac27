"""The Python client library for the gateway's WebSocket protocol (docs/PROTOCOL.md).

It owns the client side only: `GatewayClient` (one connection, a reader task that routes frames by `id`),
`ChatStream` (one `chat.send` and its reply, with the events of its tool loop), `ToolDesk` (a reply's approvals and
client tools), the typed errors and the small value types. It may import aiohttp and
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
from .stream import ChatStream, Event
from .tool_types import (
    ApprovalHandler,
    ApprovalRequest,
    ClientTool,
    Decision,
    StepEnd,
    ToolCall,
    ToolError,
    ToolHandler,
    ToolInputDelta,
    ToolResult,
)
from .types import ChatEnd, Cost, Delta, Usage, normalize_url

__all__ = [
    "DEFAULT_URL",
    "ApprovalHandler",
    "ApprovalRequest",
    "AuthError",
    "CancelledError",
    "ChatEnd",
    "ChatStream",
    "ClientTool",
    "ConflictError",
    "ConnectionClosedError",
    "Cost",
    "Decision",
    "Delta",
    "Event",
    "GatewayClient",
    "GatewayClientError",
    "InvalidRequestError",
    "LimitError",
    "NotFoundError",
    "RateLimitError",
    "ServerError",
    "StepEnd",
    "ToolCall",
    "ToolError",
    "ToolHandler",
    "ToolInputDelta",
    "ToolResult",
    "UpstreamError",
    "Usage",
    "normalize_url",
]
