"""Everything that talks to Anthropic: the SDK client, one streamed reply's assembly, and error mapping."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2

from . import errors
from .accounting import TokenUsage
from .keys import KeyProvider
from .settings import Settings

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


@dataclass(slots=True)
class Reply:
    """Accumulates one streamed reply into the content blocks the API returned, thinking signatures included."""

    blocks: list[dict[str, Any]] = field(default_factory=list)
    usage: TokenUsage = field(default_factory=TokenUsage)
    stop_reason: str | None = None
    message_id: str | None = None
    finished: bool = False  # saw message_stop
    text_parts: list[str] = field(default_factory=list)
    _tool_json: dict[int, list[str]] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def content(self, *, complete: bool) -> list[dict[str, Any]]:
        """Blocks for storage. An unfinished reply keeps only what can be replayed: text, and signed thinking."""
        if complete:
            return self.blocks
        out: list[dict[str, Any]] = []
        for block in self.blocks:
            if block["type"] == "text" and block["text"]:
                out.append(block)
            elif block["type"] == "thinking" and block.get("signature"):
                out.append(block)
        return out

    def feed(self, event: Any) -> tuple[str, str] | None:
        """Apply one SDK event; returns ("text" | "thinking", chunk) when there is something to relay."""
        kind = event.type
        if kind == "content_block_delta":
            delta = event.delta
            block = self.blocks[event.index] if event.index < len(self.blocks) else None
            if delta.type == "text_delta":
                if block is not None:
                    block["text"] += delta.text
                self.text_parts.append(delta.text)
                return ("text", delta.text)
            if delta.type == "thinking_delta":
                if block is not None:
                    block["thinking"] += delta.thinking
                return ("thinking", delta.thinking)
            if delta.type == "signature_delta" and block is not None:
                block["signature"] = block.get("signature", "") + delta.signature
            elif delta.type == "input_json_delta":
                self._tool_json.setdefault(event.index, []).append(delta.partial_json)
            return None
        if kind == "content_block_start":
            self._start_block(event.index, event.content_block)
        elif kind == "content_block_stop":
            parts = self._tool_json.pop(event.index, None)
            if parts and event.index < len(self.blocks):
                try:
                    self.blocks[event.index]["input"] = json.loads("".join(parts))
                except ValueError:
                    log.warning("tool_use block %s had invalid JSON input", event.index)
        elif kind == "message_start":
            self.message_id = event.message.id
            self.usage = TokenUsage.from_api(event.message.usage)
        elif kind == "message_delta":
            self.stop_reason = event.delta.stop_reason
            self.usage = self.usage.merged(TokenUsage.from_api(event.usage))
        elif kind == "message_stop":
            self.finished = True
        return None

    def _start_block(self, index: int, block: Any) -> None:
        data: dict[str, Any] = block.model_dump(exclude_none=True) if hasattr(block, "model_dump") else dict(block)
        if data.get("type") == "text":
            data = {"type": "text", "text": data.get("text", "")}
        elif data.get("type") == "thinking":
            data = {"type": "thinking", "thinking": data.get("thinking", ""), "signature": data.get("signature", "")}
        while len(self.blocks) < index:
            self.blocks.append({"type": "text", "text": ""})
        if index < len(self.blocks):
            self.blocks[index] = data
        else:
            self.blocks.append(data)


class Upstream:
    """Owns the SDK client. Built lazily so the gateway serves everything else when no key is configured."""

    def __init__(self, settings: Settings, keys: KeyProvider) -> None:
        self._settings = settings
        self._keys = keys
        self._client: anthropic.AsyncAnthropic | None = None
        self._client_key: str | None = None

    def has_key(self) -> bool:
        return self._keys.anthropic_key() is not None

    def client(self) -> anthropic.AsyncAnthropic:
        key = self._keys.anthropic_key()
        if key is None:
            raise errors.MissingApiKey(
                "no Anthropic API key configured: set ANTHROPIC_API_KEY or run `agentspace keys set anthropic`"
            )
        if self._client is None or key != self._client_key:
            s = self._settings
            self._client = anthropic.AsyncAnthropic(
                api_key=key,
                base_url=s.anthropic_base_url,
                # Our own retry loop knows whether a token was relayed yet; the SDK's does not.
                max_retries=0,
                timeout=httpx2.Timeout(s.upstream_read_timeout_s, connect=s.upstream_connect_timeout_s),
            )
            self._client_key = key
        return self._client

    async def stream(self, params: dict[str, Any]) -> anthropic.AsyncStream[Any]:
        """The raw SDK event stream for one request (`params` as the context assembler built them). Use it as an
        async context manager so the HTTP response is closed as soon as the caller stops reading."""
        return await self.client().messages.create(**params, stream=True)  # type: ignore[no-any-return]

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
        if self._client is not None:
            await self._client.close()
            self._client = None
