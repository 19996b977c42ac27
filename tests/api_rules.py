"""What the real Messages API refuses with a 400 before any model work, for the kinds of request this gateway sends.

The fake upstream (tests/fake_anthropic.py) applies these rules to every request, so a gateway bug the real API would
refuse fails the tests too. Each message is the API's own wording (docs and real 400 bodies; see
/work/shared/reference/tool-use.md). Where the API is more lenient than a rule here, the rule says so: the gateway
must not rely on the leniency. Tests build valid requests with `sign_thinking` and check refusals with
`check_request`, the same function the fake runs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterator
from typing import Any

# The real API's signatures are opaque and bound to the thinking text; an HMAC under a fixed key is too, and stays
# valid across fake instances (as real signatures stay valid across API servers).
_SIGNING_KEY = b"fake-anthropic thinking signature"

# Top-level fields the SDK sends for each endpoint (anthropic 2.x `messages.create` / `messages.count_tokens`).
# `temperature`, `top_p` and `top_k` are refused under the current `anthropic-version` (the SDK dropped them).
MESSAGES_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "cache_control",
        "container",
        "diagnostics",
        "inference_geo",
        "metadata",
        "output_config",
        "service_tier",
        "speed",
        "stop_sequences",
        "stream",
        "system",
        "thinking",
        "tool_choice",
        "tools",
    }
)
COUNT_TOKENS_FIELDS = frozenset(
    {"model", "messages", "cache_control", "output_config", "speed", "system", "thinking", "tool_choice", "tools"}
)
MAX_CACHE_BREAKPOINTS = 4


def sign_thinking(thinking: str) -> str:
    """The signature the fake streams after a thinking block, and the only one it accepts back for that text."""
    return base64.b64encode(hmac.new(_SIGNING_KEY, thinking.encode(), hashlib.sha256).digest()).decode()


def check_request(body: dict[str, Any], *, count_tokens: bool = False) -> str | None:
    """The message of the 400 the API would answer `body` with, or None when it would accept it."""
    return next(_refusals(body, count_tokens), None)


def _refusals(body: dict[str, Any], count_tokens: bool) -> Iterator[str]:
    allowed = COUNT_TOKENS_FIELDS if count_tokens else MESSAGES_FIELDS
    for name in sorted(set(body) - allowed):
        yield f"{name}: Extra inputs are not permitted"
    required = ("model", "messages") if count_tokens else ("model", "messages", "max_tokens")
    for name in required:
        if name not in body:
            yield f"{name}: Field required"
    if not count_tokens:
        max_tokens = body["max_tokens"]
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            yield "max_tokens: Input should be a valid integer"
        elif max_tokens < 0:
            yield "max_tokens: Input should be greater than or equal to 0"
    yield from _system_refusals(body.get("system"))
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        yield "messages: at least one message is required"
        return
    yield from _message_refusals(messages)
    breakpoints = _count_cache_breakpoints(body)
    if breakpoints > MAX_CACHE_BREAKPOINTS:
        yield f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. Found {breakpoints}."


def _system_refusals(system: Any) -> Iterator[str]:
    if isinstance(system, list):
        for block in system:
            if isinstance(block, dict) and block.get("type") == "text" and not block.get("text"):
                yield "system: text content blocks must be non-empty"


def _message_refusals(messages: list[Any]) -> Iterator[str]:
    # The API merges consecutive same-role turns today; the gateway must still send them alternating and starting
    # with `user` (older API versions refused, and merging would move a tool_result away from its tool_use).
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant"):
            yield f"messages.{i}.role: Input should be 'user' or 'assistant'"
            return
        if i == 0 and role != "user":
            yield 'messages: first message must use the "user" role'
        if i > 0 and messages[i - 1]["role"] == role:
            yield (
                'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
    for i, message in enumerate(messages):
        yield from _content_refusals(i, message, final=i == len(messages) - 1)
        if message["role"] == "assistant":
            yield from _unanswered_tool_uses(i, message, messages[i + 1] if i + 1 < len(messages) else None)
        else:
            yield from _unexpected_tool_results(i, message, messages[i - 1] if i > 0 else None)


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [block for block in content if isinstance(block, dict)] if isinstance(content, list) else []


def _content_refusals(i: int, message: dict[str, Any], *, final: bool) -> Iterator[str]:
    content = message.get("content")
    if not content and not (final and message["role"] == "assistant"):
        yield f"messages.{i}: all messages must have non-empty content except for the optional final assistant message"
    for j, block in enumerate(_blocks(message)):
        kind = block.get("type")
        if kind == "text" and not block.get("text"):
            yield "messages: text content blocks must be non-empty"
        elif kind == "thinking":
            if "cache_control" in block:
                yield f"messages.{i}.content.{j}.thinking.cache_control: Extra inputs are not permitted"
            # Signed over the text streamed: a block that lost or changed a chunk, or carries another block's
            # signature, is refused on every later request of the conversation.
            if not hmac.compare_digest(str(block.get("signature", "")), sign_thinking(str(block.get("thinking", "")))):
                yield f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"


def _unanswered_tool_uses(i: int, message: dict[str, Any], following: dict[str, Any] | None) -> Iterator[str]:
    ids = [block.get("id") for block in _blocks(message) if block.get("type") == "tool_use"]
    if not ids:
        return
    # "Immediately after": the results lead the next user message; a result behind a text block does not count.
    answered = set()
    for block in _blocks(following) if following is not None and following["role"] == "user" else []:
        if block.get("type") != "tool_result":
            break
        answered.add(block.get("tool_use_id"))
    missing = [str(tool_id) for tool_id in ids if tool_id not in answered]
    if missing:
        yield (
            f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
            f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block in the next "
            "message."
        )


def _unexpected_tool_results(i: int, message: dict[str, Any], previous: dict[str, Any] | None) -> Iterator[str]:
    called = {block.get("id") for block in _blocks(previous) if block.get("type") == "tool_use"} if previous else set()
    for j, block in enumerate(_blocks(message)):
        if block.get("type") == "tool_result" and block.get("tool_use_id") not in called:
            yield (
                f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding `tool_use` block in "
                "the previous message."
            )


def _count_cache_breakpoints(body: dict[str, Any]) -> int:
    count = 1 if body.get("cache_control") else 0
    system = body.get("system")
    for block in system if isinstance(system, list) else []:
        count += 1 if isinstance(block, dict) and block.get("cache_control") else 0
    for tool in body.get("tools") or []:
        count += 1 if isinstance(tool, dict) and tool.get("cache_control") else 0
    for message in body["messages"]:
        count += sum(1 for block in _blocks(message) if block.get("cache_control"))
    return count
