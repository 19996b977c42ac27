"""Which client frames the gateway must refuse, and how, written down from docs/PROTOCOL.md independently of
gateway/protocol.py: the fuzz tests (tests/test_fuzz.py) compare every answer with it, so a validation rule that
goes missing (NUL accepted in content, a bound off by one) fails there, not only in the hand-written cases.

`refusals(text)` is every (code, field) a frame breaks: the gateway must refuse exactly the frames with at least one,
naming one of them (which one, when several, is its choice). `expected_answer(request, session_id)` is what the live
gateway answers a frame it accepted: the final frame's type, or the error's code; None where it does not say.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Refusal = tuple[str, str | None]  # (code, field)
MAX_ID_CHARS = 256
GROUP_BY = ("model", "day", "session", "agent", "key")
# "a frame of at most 1,024 JSON values nested at most 32 deep (INVALID_MESSAGE beyond)"
MAX_VALUES = 1024
MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Rule:
    kinds: tuple[type, ...]
    required: bool = False
    blank_ok: bool = True  # False: not empty, not only whitespace
    max_len: int | None = None
    min_value: int | None = None
    max_value: int | None = None
    choices: tuple[str, ...] | None = None
    agent_id: bool = False
    tool_list: bool = False  # a list of tool definitions (chat.send, context.inspect `tools`)
    result_content: bool = False  # a client tool's result: text, or text and image blocks


def _text(max_len: int = 256, *, required: bool = False) -> Rule:
    return Rule((str,), required=required, blank_ok=False, max_len=max_len)


_COUNT = Rule((int,), min_value=1, max_value=1_000_000)
_AGENT = Rule((str,), agent_id=True)
_TOOLS = Rule((list,), tool_list=True)
DECISIONS = ("allow_once", "allow_session", "deny")
MAX_CLIENT_TOOLS = 64
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
RULES: dict[str, dict[str, Rule]] = {
    "chat.send": {
        "content": Rule((str,), required=True, blank_ok=False),
        "sessionId": _text(),
        "agentId": _AGENT,
        "model": _text(128),
        "maxTokens": _COUNT,
        "idempotencyKey": _text(200),
        "tools": _TOOLS,
        "streamToolInput": Rule((bool,)),
    },
    "chat.tool.approve": {
        "toolUseId": _text(128, required=True),
        "decision": Rule((str,), required=True, choices=DECISIONS),
        "sessionId": _text(),
    },
    "chat.tool.result": {
        "toolUseId": _text(128, required=True),
        "content": Rule((str, list), required=True, result_content=True),
        "isError": Rule((bool,)),
        "sessionId": _text(),
    },
    "session.pending": {"sessionId": _text()},
    "chat.cancel": {"sessionId": _text(required=True), "sendId": Rule((str, int))},
    "context.inspect": {
        "sessionId": _text(required=True),
        "content": Rule((str,)),
        "exact": Rule((bool,)),
        "model": _text(128),
        "tools": _TOOLS,
        "compact": Rule((bool,)),
    },
    "session.compact": {
        "sessionId": _text(required=True),
        "instructions": Rule((str,), max_len=2000),
        "keepTurns": Rule((int,), min_value=0, max_value=1000),
    },
    "usage.query": {
        "sessionId": _text(),
        "agentId": _AGENT,
        "model": _text(128),
        "since": _text(64),
        "until": _text(64),
        "groupBy": Rule((str,), choices=GROUP_BY),
        "keyName": _text(64),
    },
    "session.list": {"agentId": _AGENT, "limit": _COUNT, "cursor": _text(512)},
    "session.history": {
        "sessionId": _text(required=True),
        "limit": _COUNT,
        "beforeSeq": Rule((int,), min_value=0),
    },
    "session.delete": {"sessionId": _text(required=True)},
    "agent.list": {},
    "auth": {"token": _text(4096, required=True)},
    "ping": {},
}


def boundary_values(name: str) -> list[Any]:
    """Values on both sides of every bound a field has in any frame: where an off-by-one hides."""
    values: list[Any] = []
    for rules in RULES.values():
        rule = rules.get(name)
        if rule is None:
            continue
        for bound in (rule.min_value, rule.max_value):
            if bound is not None:
                values += [bound - 1, bound, bound + 1]
        if rule.max_len is not None:
            values += ["a" * rule.max_len, "a" * (rule.max_len + 1)]
        if rule.agent_id:
            values += ["a" * 64, "a" * 65, "a..b", "a.b", "_a", "a_", "-"]
    return values


def _storable(text: str) -> bool:
    """No NUL, no lone surrogate: the two things no database column and no UTF-8 socket can both carry."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _good_agent_id(value: str) -> bool:
    ascii_word = all(c.isascii() and (c.isalnum() or c in "_.-") for c in value)
    return 1 <= len(value) <= 64 and ascii_word and value[0].isalnum() and ".." not in value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _all_storable(value: Any) -> bool:
    if isinstance(value, str):
        return _storable(value)
    if isinstance(value, dict):
        return all(_all_storable(k) and _all_storable(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_all_storable(v) for v in value)
    return True


def _tool_ok(tool: Any) -> bool:
    """docs/PROTOCOL.md, chat.send `tools`: name (1-64 letters, digits, _, -), optional description, input_schema
    (a JSON Schema with "type": "object"), no other keys."""
    if not isinstance(tool, dict) or not set(tool) <= {"name", "description", "input_schema"}:
        return False
    name = tool.get("name")
    ascii_word = isinstance(name, str) and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
    schema = tool.get("input_schema")
    return (
        ascii_word
        and 1 <= len(name) <= 64
        and isinstance(tool.get("description", ""), str)
        and isinstance(schema, dict)
        and schema.get("type") == "object"
    )


def _tools_broken(tools: list[Any]) -> bool:
    names = [t.get("name") for t in tools if isinstance(t, dict)]
    return (
        len(tools) > MAX_CLIENT_TOOLS
        or not all(_tool_ok(t) for t in tools)
        or len(set(names)) != len(names)
        or not _all_storable(tools)
    )


def _block_ok(block: Any) -> bool:
    if not isinstance(block, dict):
        return False
    if block.get("type") == "text":
        return set(block) == {"type", "text"} and isinstance(block["text"], str)
    source = block.get("source") if block.get("type") == "image" else None
    return (
        isinstance(source, dict)
        and source.get("type") == "base64"
        and source.get("media_type") in IMAGE_TYPES
        and isinstance(source.get("data"), str)
    )


def _broken(rule: Rule, value: Any) -> bool:
    if not any(_is_int(value) if kind is int else isinstance(value, kind) for kind in rule.kinds):
        return True
    if isinstance(value, list):
        if rule.tool_list:
            return _tools_broken(value)
        if rule.result_content:
            return not all(_block_ok(b) for b in value) or not _all_storable(value)
    if isinstance(value, str):
        return (
            not _storable(value)
            or (not rule.blank_ok and not value.strip())
            or (rule.max_len is not None and len(value) > rule.max_len)
            or (rule.choices is not None and value not in rule.choices)
            or (rule.agent_id and not _good_agent_id(value))
        )
    if _is_int(value):
        return (rule.min_value is not None and value < rule.min_value) or (
            rule.max_value is not None and value > rule.max_value
        )
    return False


def _iso(text: str) -> bool:
    """An ISO 8601 date or time, as `since` and `until` take them ("Z" for UTC)."""
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _size(value: Any, depth: int = 0) -> tuple[int, int]:
    """(JSON values, deepest nesting) of a parsed frame; an object's keys are not values."""
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    if children is None:
        return 1, depth
    count, deepest = 1, depth + 1
    for child in children:
        child_count, child_depth = _size(child, depth + 1)
        count, deepest = count + child_count, max(deepest, child_depth)
    return count, deepest


def _nesting(text: str) -> int:
    """How deep the brackets of a (maybe broken) JSON text go, strings skipped."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            in_string, escaped = (escaped or char != '"'), (not escaped and char == "\\")
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


def _reject(name: str) -> Any:
    raise ValueError(name)


def refusals(text: str, *, max_content_chars: int) -> set[Refusal]:
    try:
        frame = json.loads(text, parse_constant=_reject)  # NaN and Infinity are not JSON
    except (ValueError, RecursionError):
        # Not JSON; a parser that stops at the 33rd level first may say so instead.
        return {("PARSE_ERROR", None)} | ({("INVALID_MESSAGE", None)} if _nesting(text) > MAX_DEPTH else set())
    values, depth = _size(frame)
    if values > MAX_VALUES or depth > MAX_DEPTH:
        return {("INVALID_MESSAGE", None)}
    if not isinstance(frame, dict):
        return {("INVALID_MESSAGE", None)}
    found: set[Refusal] = set()
    rid = frame.get("id")
    id_ok = rid is None or (isinstance(rid, str) and len(rid) <= MAX_ID_CHARS and _storable(rid))
    if not id_ok and not (_is_int(rid) and abs(rid) < 2**53):
        found.add(("INVALID_MESSAGE", "id"))
    rules = RULES.get(frame.get("type")) if isinstance(frame.get("type"), str) else None
    if rules is None:
        return found | {("INVALID_MESSAGE", "type")}
    for name, rule in rules.items():
        value = frame.get(name)  # null is absent
        if value is None:
            if rule.required:
                found.add(("INVALID_MESSAGE", name))
        elif _broken(rule, value):
            found.add(("INVALID_MESSAGE", name))
    content = frame.get("content")
    if (
        isinstance(content, list)
        and frame.get("type") == "chat.tool.result"
        and ("INVALID_MESSAGE", "content") not in found
    ):
        # A client tool's result: its text (the text blocks together) is bounded like a message's.
        content = "".join(b["text"] for b in content if b.get("type") == "text")
    if isinstance(content, str) and len(content) > max_content_chars:
        found.add(("MESSAGE_TOO_LARGE", "content"))
    return found


def expected_answer(kind: str, fields: dict[str, Any], session_id: str, session_model: str) -> str | None:
    """The live gateway's answer to an accepted frame, with one session (of agent `default`, last sent to
    `session_model`) that exists: the last frame's type or the error code. None where the outcome depends on more
    than the frame (a repeated idempotencyKey, a cursor) or the docs leave it open."""
    session = fields.get("sessionId")
    known = session == session_id
    agent = fields.get("agentId")
    if kind == "ping":
        return "pong"
    if kind == "agent.list":
        return "agent.list"
    if kind == "auth":
        return "auth.ok"  # the live gateway has no token: any token is accepted
    if kind == "chat.cancel":
        return "NOTHING_TO_CANCEL"  # every stream has ended before the next frame is sent
    if kind in ("chat.tool.approve", "chat.tool.result"):
        return "TOOL_CALL_NOT_FOUND"  # no turn here ever waits on a call
    if kind == "session.pending":
        return "session.pending" if session is None or known else "SESSION_NOT_FOUND"
    # The default agent has the built-in memory tool, and a client tool may not take its name; an unknown session or
    # agent is refused first.
    clash = any(t.get("name") == "memory" for t in fields.get("tools") or [])
    if clash and kind == "context.inspect" and known:
        return "INVALID_MESSAGE"
    if clash and kind == "chat.send" and agent in (None, "default") and (session is None or known):
        return "INVALID_MESSAGE"
    if kind == "session.compact":
        # Whether there is anything older than the turns it keeps depends on the session's history so far.
        return None if known else "SESSION_NOT_FOUND"
    if kind in ("session.history", "session.delete", "context.inspect"):
        if not known:
            return "SESSION_NOT_FOUND"
        return {"session.history": "session.history.result", "session.delete": "session.deleted"}.get(
            kind, "context.inspection"
        )
    if kind == "session.list":
        if "cursor" in fields:
            return None
        return "AGENT_NOT_FOUND" if agent not in (None, "default") else "session.list"
    if kind == "usage.query":
        if "keyName" in fields:
            return "INVALID_MESSAGE"  # the live gateway has no named keys
        times = [fields[name] for name in ("since", "until") if name in fields]
        return "usage.report" if all(_iso(t) for t in times) else "INVALID_MESSAGE"
    if "idempotencyKey" in fields:
        return None
    if session is not None:
        # "for an existing session it must match the session's agent", else it is not found (docs/PROTOCOL.md).
        if not known or agent not in (None, "default"):
            return "SESSION_NOT_FOUND"
    elif agent not in (None, "default"):
        return "AGENT_NOT_FOUND"  # any id but `default` needs a workspace
    # A send without a model continues its session's model (docs/PROTOCOL.md); a new session gets the default.
    model = fields.get("model") or (session_model if known else "claude-sonnet-5-5")
    if model in ("claude-sonnet-4", "claude-3-5-haiku-20241022"):
        return "MODEL_NOT_FOUND"  # retired: the upstream answers 404
    return "chat.stream.end"
