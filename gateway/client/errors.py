"""Typed exceptions for `gateway.client`: one class per family of error codes, all carrying the protocol's `code`.

Catch `GatewayClientError` for everything, a family to branch (`except RateLimitError: back off`), and read `.code`
for the exact reason. `.retryable` is the gateway's own verdict; client-side failures (the socket closed, a request
timed out) set it too.
"""

from __future__ import annotations

from typing import Any


class GatewayClientError(Exception):
    code: str = "CLIENT_ERROR"
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        retryable: bool | None = None,
        frame: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable
        self.frame: dict[str, Any] = frame or {}

    @property
    def session_id(self) -> str | None:
        value = self.frame.get("sessionId")
        return value if isinstance(value, str) else None

    @property
    def partial_text(self) -> str:
        """What had streamed before an upstream failure (the gateway saved it too)."""
        value = self.frame.get("partialText")
        return value if isinstance(value, str) else ""

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidRequestError(GatewayClientError):
    """PARSE_ERROR, INVALID_MESSAGE, MESSAGE_TOO_LARGE: the request itself was wrong."""


class AuthError(GatewayClientError):
    """UNAUTHORIZED (or the upgrade refused with 401/403): a missing or wrong gateway token, or a foreign origin."""


class NotFoundError(GatewayClientError):
    """SESSION_NOT_FOUND, AGENT_NOT_FOUND."""


class ConflictError(GatewayClientError):
    """STREAM_IN_PROGRESS, NOTHING_TO_CANCEL, DUPLICATE_REQUEST, NOTHING_TO_COMPACT: the state did not allow it right
    now."""


class RateLimitError(GatewayClientError):
    """RATE_LIMITED: this connection sent too fast, or Anthropic answered 429."""


class LimitError(GatewayClientError):
    """CONTEXT_TOO_LARGE, BUDGET_EXCEEDED: the request would pass a limit; nothing was sent."""


class UpstreamError(GatewayClientError):
    """MISSING_API_KEY, UPSTREAM_*, MODEL_NOT_FOUND, OVERLOADED, COMPACTION_FAILED: Anthropic could not be used or
    failed."""


class CancelledError(GatewayClientError):
    """CANCELLED: the request was cancelled before its stream started."""


class ServerError(GatewayClientError):
    """DATABASE_UNAVAILABLE, INTERNAL_ERROR, and codes this client does not know yet."""


class ConnectionClosedError(GatewayClientError):
    """CONNECTION_CLOSED / CONNECTION_FAILED / TIMEOUT: client-side; the socket is gone or an answer never came."""

    code = "CONNECTION_CLOSED"
    retryable = True


FAMILIES: dict[str, type[GatewayClientError]] = {
    "PARSE_ERROR": InvalidRequestError,
    "INVALID_MESSAGE": InvalidRequestError,
    "MESSAGE_TOO_LARGE": InvalidRequestError,
    "UNAUTHORIZED": AuthError,
    "SESSION_NOT_FOUND": NotFoundError,
    "AGENT_NOT_FOUND": NotFoundError,
    "TOOL_CALL_NOT_FOUND": NotFoundError,
    "STREAM_IN_PROGRESS": ConflictError,
    "NOTHING_TO_CANCEL": ConflictError,
    "DUPLICATE_REQUEST": ConflictError,
    "APPROVAL_NOT_PENDING": ConflictError,
    "NOTHING_TO_COMPACT": ConflictError,
    "RATE_LIMITED": RateLimitError,
    "CONTEXT_TOO_LARGE": LimitError,
    "BUDGET_EXCEEDED": LimitError,
    "MISSING_API_KEY": UpstreamError,
    "UPSTREAM_AUTH": UpstreamError,
    "UPSTREAM_BAD_REQUEST": UpstreamError,
    "MODEL_NOT_FOUND": UpstreamError,
    "OVERLOADED": UpstreamError,
    "UPSTREAM_ERROR": UpstreamError,
    "UPSTREAM_TIMEOUT": UpstreamError,
    "UPSTREAM_UNAVAILABLE": UpstreamError,
    "COMPACTION_FAILED": UpstreamError,
    "CANCELLED": CancelledError,
    "DATABASE_UNAVAILABLE": ServerError,
    "INTERNAL_ERROR": ServerError,
}


def error_from_frame(frame: dict[str, Any]) -> GatewayClientError:
    code = str(frame.get("code") or "INTERNAL_ERROR")
    kind = FAMILIES.get(code, ServerError)
    return kind(str(frame.get("message") or code), code=code, retryable=bool(frame.get("retryable")), frame=frame)
