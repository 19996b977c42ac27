"""Everything that talks to Anthropic: the SDK client, one streamed reply's assembly, and error mapping."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
from anthropic._constants import RAW_RESPONSE_HEADER

from gateway import errors
from gateway.settings import Settings
from gateway.store.db import json_loads

from .key_vault import KeyProvider

log = logging.getLogger(__name__)

_STATUS_ERRORS: dict[int, type[errors.UpstreamError]] = {
    400: errors.UpstreamBadRequest,
    401: errors.UpstreamAuth,
    403: errors.UpstreamAuth,
    404: errors.ModelNotFound,
    413: errors.UpstreamBadRequest,
    429: errors.UpstreamRateLimited,
    529: errors.Overloaded,
}
_TYPE_ERRORS: dict[str, type[errors.UpstreamError]] = {
    "overloaded_error": errors.Overloaded,
    "rate_limit_error": errors.UpstreamRateLimited,
    "authentication_error": errors.UpstreamAuth,
    "permission_error": errors.UpstreamAuth,
    "not_found_error": errors.ModelNotFound,
    "invalid_request_error": errors.UpstreamBadRequest,
    "api_error": errors.UpstreamError,
}


def map_error(exc: BaseException) -> errors.GatewayError:
    """One stable code per kind of upstream fault. Raw httpx2 errors arrive after headers; catch both families."""
    if isinstance(exc, errors.GatewayError):
        return exc
    if isinstance(exc, anthropic.APIStatusError):
        # A mid-stream `event: error` arrives as status 200: its body's type says what it was.
        kind = _TYPE_ERRORS.get(exc.type or "") if exc.status_code == 200 else None
        kind = kind or _STATUS_ERRORS.get(exc.status_code) or _TYPE_ERRORS.get(exc.type or "") or errors.UpstreamError
        message = exc.api_message or str(exc)
        return kind(f"upstream {exc.status_code}: {message}", upstreamStatus=exc.status_code)
    if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException | TimeoutError):
        return errors.UpstreamTimeout("upstream timed out")
    if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError | OSError):
        return errors.UpstreamUnavailable(f"upstream connection failed: {type(exc).__name__}")
    return errors.UpstreamError(f"upstream failed: {type(exc).__name__}: {exc}")


def retry_after_s(exc: BaseException) -> float | None:
    """The server's own wait, from `retry-after-ms` or `retry-after` (seconds)."""
    if not isinstance(exc, anthropic.APIStatusError):
        return None
    headers = exc.response.headers
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw:
            try:
                return max(0.0, float(raw) * scale)
            except ValueError:
                continue
    return None


class EventStream:
    """One streamed reply's events as the JSON objects the API sent, read through the SDK's raw-response API.

    The SDK's own stream builds a typed object for every event; a turn reads a few fields of each, and building
    them cost ~30 us an event (measured, issue 7: 6 ms more per 200-delta reply). The request, auth, timeouts,
    the status errors before the first byte and the SSE decoder stay the SDK's; as its stream does, `ping` and
    unnamed events are skipped and an `error` event raises `APIStatusError` (status 200) carrying its body.
    Use it as an async context manager: leaving closes the HTTP response, so the upstream stops generating.
    """

    def __init__(self, response: httpx2.Response) -> None:
        self._http = response

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        async for sse in anthropic.AsyncStream.raw_events(self._http):
            name = sse.event
            if name is None or name == "ping":
                continue
            if name == "error":
                raise _stream_error(sse.data, self._http)
            if sse.data:
                yield json_loads(sse.data)


def _stream_error(data: str, response: httpx2.Response) -> anthropic.APIStatusError:
    """What the SDK raises for an `error` event: the same class, message and body."""
    body: object = data
    try:
        body = json.loads(data)
        message = f"{body}"
    except ValueError:
        message = data or f"Error code: {response.status_code}"
    return anthropic.APIStatusError(message, response=response, body=body)


class Upstream:
    """Owns the SDK client. Built lazily so the gateway serves everything else when no key is configured."""

    def __init__(self, settings: Settings, keys: KeyProvider) -> None:
        self._settings = settings
        self._keys = keys
        self._client: anthropic.AsyncAnthropic | None = None
        self._client_key: str | None = None
        self._retired: list[anthropic.AsyncAnthropic] = []  # clients built for a key that has since changed

    def has_key(self) -> bool:
        return self._keys.anthropic_key() is not None

    def client(self) -> anthropic.AsyncAnthropic:
        key = self._keys.anthropic_key()
        if key is None:
            raise errors.MissingApiKey(
                "no Anthropic API key configured: set ANTHROPIC_API_KEY or run `agentspace keys set anthropic`"
            )
        if self._client is None or key != self._client_key:
            if self._client is not None:
                self._retired.append(self._client)  # streams still running on it finish; closed with ours
            s = self._settings
            timeout = httpx2.Timeout(s.upstream_read_timeout_s, connect=s.upstream_connect_timeout_s)
            self._client = anthropic.AsyncAnthropic(
                api_key=key,
                base_url=s.anthropic_base_url,
                # Our own retry loop knows whether a token was relayed yet; the SDK's does not.
                max_retries=0,
                timeout=timeout,
                # The SDK's aiohttp transport: its C HTTP parser, instead of the pure-Python h11 default, halves the
                # SDK's CPU per request and per streamed chunk (issue 7: 1.1 ms less CPU per 20-token turn). It
                # keeps the SDK's timeouts and maps aiohttp's errors to httpx2's, and honours HTTPS_PROXY.
                http_client=anthropic.DefaultAioHttpClient(timeout=timeout),
            )
            self._client_key = key
        return self._client

    async def stream(self, body: bytes) -> EventStream:
        """The event stream for one streamed `POST /v1/messages` whose JSON body is `body` (with `"stream":true`;
        gateway/context/request_body.py); raises the SDK's status errors before the first byte, as `messages.create`
        does. Use it as an async context manager. The body goes as it is: the SDK's auth, headers, timeouts and
        errors apply, its copying and encoding of the parameters does not (issue 15)."""
        options: Any = {"headers": {"content-type": "application/json", RAW_RESPONSE_HEADER: "stream"}}
        response = await self.client().post("/v1/messages", cast_to=httpx2.Response, content=body, options=options)
        return EventStream(response)

    async def forward(
        self, method: str, path: str, *, content: bytes | None, headers: dict[str, str], params: dict[str, str]
    ) -> httpx2.Response:
        """One HTTP API request relayed as it came (docs/HTTP_API.md): the body's bytes untouched, the client's
        `anthropic-*` headers and query, this gateway's key. The response comes back unread, to be streamed or read
        whole; an error status raises the SDK's APIStatusError, its response read. Retries are the client's."""
        options: Any = {"headers": {**headers, RAW_RESPONSE_HEADER: "stream"}, "params": params}
        client = self.client()
        if method == "GET":
            return await client.get(path, cast_to=httpx2.Response, options=options)
        return await client.post(path, cast_to=httpx2.Response, content=content, options=options)

    async def count_tokens(self, params: dict[str, Any]) -> int:
        body = {k: v for k, v in params.items() if k in ("model", "messages", "system", "tools", "thinking")}
        try:
            result = await self.client().messages.count_tokens(**body)
        except errors.GatewayError:
            raise
        except Exception as exc:
            raise map_error(exc) from exc
        return int(result.input_tokens)

    async def close(self) -> None:
        clients, self._retired = self._retired, []
        if self._client is not None:
            clients.append(self._client)
            self._client = None
        for client in clients:
            await client.close()
