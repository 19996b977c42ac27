"""The HTTP API's errors in Anthropic's shape and statuses, so an Anthropic SDK raises the same exception class (and
retries, or not) as it would against the API: `{"type": "error", "error": {"type": ..., "message": ...}}`."""

from __future__ import annotations

import uuid

from aiohttp import web

from gateway import errors
from gateway.chat.passthrough_stream import anthropic_error

# Our error codes -> (HTTP status, the API's error type).
STATUS_OF: dict[str, tuple[int, str]] = {
    "INVALID_MESSAGE": (400, "invalid_request_error"),
    "PARSE_ERROR": (400, "invalid_request_error"),
    "MESSAGE_TOO_LARGE": (413, "request_too_large"),
    "UNAUTHORIZED": (401, "authentication_error"),
    "SESSION_NOT_FOUND": (404, "not_found_error"),
    "AGENT_NOT_FOUND": (404, "not_found_error"),
    "BUDGET_EXCEEDED": (429, "rate_limit_error"),
    "STREAM_IN_PROGRESS": (429, "rate_limit_error"),
    "RATE_LIMITED": (429, "rate_limit_error"),
    "MISSING_API_KEY": (500, "api_error"),
    "UPSTREAM_AUTH": (500, "api_error"),  # the gateway's own key was refused: not the client's to fix
    "UPSTREAM_UNAVAILABLE": (502, "api_error"),
    "UPSTREAM_ERROR": (502, "api_error"),
    "DATABASE_UNAVAILABLE": (503, "api_error"),
    "UPSTREAM_TIMEOUT": (504, "timeout_error"),
    "OVERLOADED": (529, "overloaded_error"),
}
# A retry cannot help these; the SDKs honour `x-should-retry` over their own rules.
NOT_RETRYABLE = frozenset({"BUDGET_EXCEEDED", "MISSING_API_KEY", "UPSTREAM_AUTH"})


def new_request_id() -> str:
    return f"req_agentspace_{uuid.uuid4().hex[:24]}"


def error_response(
    status: int, kind: str, message: str, *, request_id: str | None = None, retry: bool | None = None
) -> web.Response:
    request_id = request_id or new_request_id()
    headers = {"request-id": request_id, "Content-Type": "application/json"}
    if retry is not None:
        headers["x-should-retry"] = "true" if retry else "false"
    return web.Response(status=status, body=anthropic_error(kind, message, request_id), headers=headers)


def gateway_error(exc: errors.GatewayError, request_id: str | None = None) -> web.Response:
    status, kind = STATUS_OF.get(exc.code, (500, "api_error"))
    retry = False if exc.code in NOT_RETRYABLE else None
    return error_response(status, kind, exc.message, request_id=request_id, retry=retry)
