"""Validation of the tool-shaped fields of client frames, called once from `protocol.parse_frame`: the tools a
`chat.send` brings for the client to run, and the content of a client's `chat.tool.result`. Both end up in requests
to Anthropic, so what the API would refuse is refused here, with the field named."""

from __future__ import annotations

import re
from typing import Any, Final

from gateway.errors import InvalidMessage

MAX_CLIENT_TOOLS: Final = 64
MAX_DEPTH: Final = 32
TOOL_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_TOOL_KEYS: Final = frozenset({"name", "description", "input_schema"})
_IMAGE_TYPES: Final = ("image/png", "image/jpeg", "image/gif", "image/webp")


def _strings_ok(value: Any, where: str, depth: int = 0) -> None:
    """No NUL, no lone surrogate anywhere, and no nesting deeper than MAX_DEPTH (iteratively bounded by depth)."""
    if depth > MAX_DEPTH:
        raise InvalidMessage(f"{where} nests more than {MAX_DEPTH} levels", field=where.split(".")[0])
    if isinstance(value, str):
        if "\x00" in value or not _encodable(value):
            raise InvalidMessage(f"{where} holds a NUL or a lone surrogate", field=where.split(".")[0])
    elif isinstance(value, dict):
        for key, item in value.items():
            _strings_ok(key, where, depth + 1)
            _strings_ok(item, where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _strings_ok(item, where, depth + 1)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_client_tools(tools: list[Any]) -> list[dict[str, Any]]:
    """`chat.send`'s `tools`: Anthropic tool definitions (name, description, input_schema) the client runs."""
    if len(tools) > MAX_CLIENT_TOOLS:
        raise InvalidMessage(f"chat.send: at most {MAX_CLIENT_TOOLS} tools", field="tools")
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        where = f"chat.send: tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidMessage(f"{where} must be an object", field="tools")
        extra = sorted(set(tool) - _TOOL_KEYS)
        if extra:
            raise InvalidMessage(f"{where}: unknown field(s) {', '.join(extra)}", field="tools")
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise InvalidMessage(f"{where}: name must be 1-64 letters, digits, '_' or '-'", field="tools")
        if name in seen:
            raise InvalidMessage(f"{where}: duplicate name {name!r}", field="tools")
        seen.add(name)
        if not isinstance(tool.get("description", ""), str):
            raise InvalidMessage(f"{where}: description must be a string", field="tools")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise InvalidMessage(f'{where}: input_schema must be a JSON Schema with "type": "object"', field="tools")
        _strings_ok(tool, "tools")
    return tools


def check_result_content(content: Any) -> str | list[dict[str, Any]]:
    """A client tool's result: a string, or a list of text and base64 image blocks."""
    if isinstance(content, str):
        return content
    for i, block in enumerate(content):
        where = f"chat.tool.result: content[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str) and set(block) == {"type", "text"}:
            continue
        source = block.get("source") if kind == "image" else None
        if (
            isinstance(source, dict)
            and source.get("type") == "base64"
            and source.get("media_type") in _IMAGE_TYPES
            and isinstance(source.get("data"), str)
        ):
            continue
        raise InvalidMessage(
            f'{where} must be {{"type": "text", "text": ...}} or a base64 image block', field="content"
        )
    _strings_ok(content, "content")
    return list(content)
