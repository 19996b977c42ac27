"""Recognising a conversation in stateless HTTP traffic: a request to /v1/messages carries the whole conversation, and
one that extends a stored one (same key, agent, system and tools, same earlier messages) belongs to its session.

Each conversation prefix has a hash: h0 = H(key, agent, system, tools), h(i) = H(h(i-1), message i). A session written
by HTTP traffic keeps `tail_hash`, the hash of the conversation as its client will send it next (with the reply, or
without one when it failed), so finding the session a request continues is one index lookup over the request's
prefix hashes. What does not change the conversation does not change a hash: `cache_control` markers (clients move
them every turn), null fields, a string content versus its one text block, and thinking blocks (clients may drop those
of earlier turns, and the API ignores them there).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import orjson

_DROPPED_BLOCKS = ("thinking", "redacted_thinking")


def blocks_of(content: Any) -> list[dict[str, Any]]:
    """A message's content as content blocks: a string is one text block, as the API reads it."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [block for block in content if isinstance(block, dict)]
    return []


def text_of(blocks: Iterable[dict[str, Any]]) -> str:
    return "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items() if v is not None and k != "cache_control"}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def stored_blocks(content: Any) -> list[dict[str, Any]]:
    """A message's content as it is stored: its blocks without `cache_control` markers (a hint to the API's cache,
    not part of the conversation; replayed by a later chat.send they could pass the API's limit of four)."""
    canonical: list[dict[str, Any]] = _canonical(blocks_of(content))
    return canonical


def message_hash(role: str, content: Any) -> str:
    """One message on its own (no prefix), to compare a stored history with a request position by position."""
    return _digest(_dumps(_message_form(role, content)))


def _message_form(role: str, content: Any) -> dict[str, Any]:
    kept = [b for b in blocks_of(content) if b.get("type") not in _DROPPED_BLOCKS]
    return {"role": role, "content": _canonical(kept)}


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))  # length-prefixed: no two different part lists hash alike
        h.update(part)
    return h.hexdigest()


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def base_hash(key_id: str | None, agent_id: str, system: Any, tools: Any) -> str:
    """h0: whose conversation, under which system prompt and tools. A string system is its one text block."""
    system_form = _canonical(blocks_of(system)) if system is not None else None
    return _digest(b"v1", (key_id or "").encode(), agent_id.encode(), _dumps(system_form), _dumps(_canonical(tools)))


def extend(previous: str, role: str, content: Any) -> str:
    """The hash of the conversation `previous` names with one more message."""
    return _digest(previous.encode(), _dumps(_message_form(role, content)))


def prefix_hashes(base: str, messages: list[dict[str, Any]]) -> list[str]:
    """h(1) .. h(n) for the request's messages (h(i): the first i messages)."""
    out: list[str] = []
    current = base
    for message in messages:
        current = extend(current, str(message.get("role")), message.get("content"))
        out.append(current)
    return out
