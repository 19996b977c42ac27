"""Domain errors, defined once. The connection turns each into an `error` frame with its stable `code`."""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    """Base of every error a client may see. `code` is part of the protocol and never changes."""

    code: ClassVar[str] = "INTERNAL_ERROR"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, retryable: bool | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable  # type: ignore[misc]
        self.details = details


class InternalError(GatewayError):
    code = "INTERNAL_ERROR"


class ParseError(GatewayError):
    code = "PARSE_ERROR"


class InvalidMessage(GatewayError):
    code = "INVALID_MESSAGE"


class MessageTooLarge(GatewayError):
    code = "MESSAGE_TOO_LARGE"


class SessionNotFound(GatewayError):
    code = "SESSION_NOT_FOUND"


class AgentNotFound(GatewayError):
    code = "AGENT_NOT_FOUND"


class StreamInProgress(GatewayError):
    code = "STREAM_IN_PROGRESS"
    retryable = True


class NothingToCancel(GatewayError):
    code = "NOTHING_TO_CANCEL"


class DuplicateRequest(GatewayError):
    """Two sends with one idempotencyKey raced to the database and this one lost. The turn answers `chat.state`
    instead; a client sees this code only if the winner vanished in between (its session was deleted)."""

    code = "DUPLICATE_REQUEST"
    retryable = True


class Cancelled(GatewayError):
    code = "CANCELLED"


class MissingApiKey(GatewayError):
    code = "MISSING_API_KEY"


class ContextTooLarge(GatewayError):
    code = "CONTEXT_TOO_LARGE"


class NothingToCompact(GatewayError):
    """`session.compact` found nothing older than the turns it keeps (or only the summary in force)."""

    code = "NOTHING_TO_COMPACT"


class CompactionFailed(GatewayError):
    """The model's answer to a summarisation request held no summary; the session is unchanged."""

    code = "COMPACTION_FAILED"
    retryable = True


class BudgetExceeded(GatewayError):
    code = "BUDGET_EXCEEDED"


class RateLimited(GatewayError):
    """Too many frames from this connection, or Anthropic's 429."""

    code = "RATE_LIMITED"
    retryable = True


class Unauthorized(GatewayError):
    code = "UNAUTHORIZED"


class DatabaseUnavailable(GatewayError):
    code = "DATABASE_UNAVAILABLE"
    retryable = True


# Upstream failures: one code per kind of fault, so clients can branch without parsing messages.
class UpstreamError(GatewayError):
    code = "UPSTREAM_ERROR"
    retryable = True


class UpstreamAuth(UpstreamError):
    code = "UPSTREAM_AUTH"
    retryable = False


class UpstreamBadRequest(UpstreamError):
    code = "UPSTREAM_BAD_REQUEST"
    retryable = False


class ModelNotFound(UpstreamError):
    code = "MODEL_NOT_FOUND"
    retryable = False


class UpstreamRateLimited(UpstreamError):
    code = "RATE_LIMITED"
    retryable = True


class Overloaded(UpstreamError):
    code = "OVERLOADED"
    retryable = True


class UpstreamTimeout(UpstreamError):
    code = "UPSTREAM_TIMEOUT"
    retryable = True


class UpstreamUnavailable(UpstreamError):
    """Connection refused or reset before any response."""

    code = "UPSTREAM_UNAVAILABLE"
    retryable = True


class ToolCallNotFound(GatewayError):
    """A `chat.tool.approve` or client `chat.tool.result` for a call no turn is waiting on."""

    code = "TOOL_CALL_NOT_FOUND"


class ApprovalNotPending(GatewayError):
    """The call was already decided (by an earlier answer, its policy, or its deadline) or its turn ended."""

    code = "APPROVAL_NOT_PENDING"
