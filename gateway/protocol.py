"""The wire protocol: parse and validate client frames once, at the boundary, and dump server frames.

Every client frame is a JSON object with a `type` and an optional `id` (string or integer) that every reply echoes.
Validation is table-driven: each request type names its fields, their JSON types and bounds, so the error message
can say exactly which field is wrong.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from gateway.errors import GatewayError, InvalidMessage, MessageTooLarge, ParseError
from gateway.frame_json import FrameTooComplex, load_frame_json
from gateway.protocol_tools import check_client_tools, check_result_content

RequestId = str | int | None

MAX_ID_CHARS: Final = 256
GROUP_BY: Final = ("model", "day", "session", "agent", "key")
DECISIONS: Final = ("allow_once", "allow_session", "deny")
# Agent ids become folder names under $AGENTSPACE_HOME/agents, so they are checked here, once, for every frame.
AGENT_ID_PATTERN: Final = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
AGENT_ID_RULE: Final = (
    "must be 1-64 letters, digits, '_', '.' or '-', start with a letter or digit, and not contain '..'"
)


@dataclass(frozen=True, slots=True)
class Field:
    wire: str
    kind: type | tuple[type, ...]
    required: bool = False
    max_len: int | None = None
    min_value: int | None = None
    max_value: int | None = None
    choices: tuple[str, ...] | None = None
    non_empty: bool = False
    pattern: re.Pattern[str] | None = None
    rule: str = ""  # what `pattern` means, for the error message


def _text(name: str, required: bool = False, max_len: int = 256) -> Field:
    return Field(name, str, required=required, max_len=max_len, non_empty=True)


_SESSION_ID = _text("sessionId")
_AGENT_ID = Field("agentId", str, pattern=AGENT_ID_PATTERN, rule=AGENT_ID_RULE)
_MODEL = _text("model", max_len=128)

# type -> fields. `content` length is bounded by settings (checked in `parse_frame`), not here.
SCHEMAS: Final[dict[str, tuple[Field, ...]]] = {
    "chat.send": (
        Field("content", str, required=True, non_empty=True),
        _SESSION_ID,
        _AGENT_ID,
        _MODEL,
        Field("maxTokens", int, min_value=1, max_value=1_000_000),
        _text("idempotencyKey", max_len=200),
        Field("tools", list),
        Field("streamToolInput", bool),
    ),
    "chat.tool.approve": (
        _text("toolUseId", required=True, max_len=128),
        Field("decision", str, required=True, choices=DECISIONS),
        _SESSION_ID,
    ),
    "chat.tool.result": (
        _text("toolUseId", required=True, max_len=128),
        Field("content", (str, list), required=True),
        Field("isError", bool),
        _SESSION_ID,
    ),
    "session.pending": (_SESSION_ID,),
    "chat.cancel": (_text("sessionId", required=True), Field("sendId", (str, int))),
    "context.inspect": (
        _text("sessionId", required=True),
        Field("content", str),
        Field("exact", bool),
        _MODEL,
        Field("tools", list),
        Field("compact", bool),
    ),
    "session.compact": (
        _text("sessionId", required=True),
        Field("instructions", str, max_len=2000),
        Field("keepTurns", int, min_value=0, max_value=1000),
    ),
    "usage.query": (
        _SESSION_ID,
        _AGENT_ID,
        _MODEL,
        _text("since", max_len=64),
        _text("until", max_len=64),
        Field("groupBy", str, choices=GROUP_BY),
        _text("keyName", max_len=64),
    ),
    "session.list": (_AGENT_ID, Field("limit", int, min_value=1, max_value=1_000_000), _text("cursor", max_len=512)),
    "session.history": (
        _text("sessionId", required=True),
        Field("limit", int, min_value=1, max_value=1_000_000),
        Field("beforeSeq", int, min_value=0),
    ),
    "session.delete": (_text("sessionId", required=True),),
    "agent.list": (),
    "auth": (_text("token", required=True, max_len=4096),),
    "ping": (),
}


@dataclass(frozen=True, slots=True)
class Request:
    type: str
    id: RequestId
    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", bool: "a boolean", list: "a list"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _check(request_type: str, spec: Field, value: Any) -> None:
    where = f"{request_type}: field '{spec.wire}'"
    kinds = spec.kind if isinstance(spec.kind, tuple) else (spec.kind,)
    # bool is an int in Python; a JSON true must not pass as an integer.
    if isinstance(value, bool) and bool not in kinds:
        raise InvalidMessage(f"{where} must be {_type_name(spec.kind)}", field=spec.wire)
    if not isinstance(value, kinds):
        raise InvalidMessage(f"{where} must be {_type_name(spec.kind)}", field=spec.wire)
    if isinstance(value, str):
        _check_text(where, spec.wire, value)
        if spec.non_empty and not value.strip():
            raise InvalidMessage(f"{where} must not be empty", field=spec.wire)
        if spec.max_len is not None and len(value) > spec.max_len:
            raise InvalidMessage(f"{where} is longer than {spec.max_len} characters", field=spec.wire)
        if spec.choices is not None and value not in spec.choices:
            raise InvalidMessage(f"{where} must be one of {', '.join(spec.choices)}", field=spec.wire)
        # fullmatch, not `$`: `$` also matches before a trailing newline.
        if spec.pattern is not None and not spec.pattern.fullmatch(value):
            raise InvalidMessage(f"{where} {spec.rule}", field=spec.wire)
    if isinstance(value, int) and not isinstance(value, bool):
        if spec.min_value is not None and value < spec.min_value:
            raise InvalidMessage(f"{where} must be at least {spec.min_value}", field=spec.wire)
        if spec.max_value is not None and value > spec.max_value:
            raise InvalidMessage(f"{where} must be at most {spec.max_value}", field=spec.wire)


def storable(text: str) -> bool:
    """Whether a string can be sent as UTF-8 and stored in both databases: no lone surrogates (JSON lets "\\ud800"
    through; UTF-8 cannot encode it) and no NUL (PostgreSQL TEXT cannot hold it). One rule for SQLite and PostgreSQL."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(where: str, wire: str, value: str) -> None:
    if "\x00" in value:
        raise InvalidMessage(f"{where} must not contain NUL characters (U+0000)", field=wire)
    if not storable(value):
        raise InvalidMessage(f"{where} contains a lone UTF-16 surrogate (like \\ud800), not text", field=wire)


def request_id_of(raw: Any) -> RequestId:
    """The `id` to echo, or None when it is absent or not a usable id."""
    if isinstance(raw, dict):
        rid = raw.get("id")
        if isinstance(rid, str) and len(rid) <= MAX_ID_CHARS and storable(rid):
            return rid
        if isinstance(rid, int) and not isinstance(rid, bool) and abs(rid) < 2**53:
            return rid
    return None


def parse_frame(text: str, *, max_content_chars: int) -> Request:
    """Parse one client frame. Raises ParseError / InvalidMessage (with `request_id` set in details when known)."""
    try:
        raw = load_frame_json(text)
    except FrameTooComplex as exc:
        raise InvalidMessage(f"frame is not a frame of this protocol: {exc}") from None
    except ValueError as exc:
        raise ParseError(f"frame is not valid JSON: {exc}") from None
    rid = request_id_of(raw)
    try:
        return _validate(raw, rid, max_content_chars)
    except GatewayError as exc:
        exc.details.setdefault("request_id", rid)
        raise


def _validate(raw: Any, rid: RequestId, max_content_chars: int) -> Request:
    if not isinstance(raw, dict):
        raise InvalidMessage("frame must be a JSON object")
    if "id" in raw and raw["id"] is not None and rid is None:
        raise InvalidMessage(
            f"field 'id' must be a string (at most {MAX_ID_CHARS} characters, no NUL or lone surrogates) or an integer",
            field="id",
        )
    request_type = raw.get("type")
    if not isinstance(request_type, str):
        raise InvalidMessage("field 'type' is required and must be a string", field="type")
    schema = SCHEMAS.get(request_type)
    if schema is None:
        shown = request_type if len(request_type) <= 64 else request_type[:64] + "..."
        raise InvalidMessage(f"unknown type {shown!r}; known: {', '.join(SCHEMAS)}", field="type")
    fields: dict[str, Any] = {}
    for spec in schema:
        value = raw.get(spec.wire)
        if value is None:
            if spec.required:
                raise InvalidMessage(f"{request_type}: field '{spec.wire}' is required", field=spec.wire)
            continue
        _check(request_type, spec, value)
        fields[spec.wire] = value
    if "tools" in fields:
        fields["tools"] = check_client_tools(fields["tools"])
    content = fields.get("content")
    if request_type == "chat.tool.result":
        content = fields["content"] = check_result_content(content)
        if isinstance(content, list):  # its text is bounded like a message's; images by the frame's size
            content = "".join(block["text"] for block in content if block["type"] == "text")
    if isinstance(content, str) and len(content) > max_content_chars:
        raise MessageTooLarge(
            f"{request_type}: field 'content' has {len(content)} characters; the limit is {max_content_chars}",
            field="content",
        )
    return Request(type=request_type, id=rid, fields=fields)


def parse_time(value: str | None, field_name: str) -> datetime | None:
    """ISO 8601 to aware UTC. A date alone means its midnight UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidMessage(f"field '{field_name}' must be an ISO 8601 date or time", field=field_name) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def dump(frame: dict[str, Any]) -> str:
    # orjson: a context.inspection frame carries the whole history, and the stdlib takes ~12 ms per MB of it.
    try:
        return orjson.dumps(frame, default=_default, option=orjson.OPT_PASSTHROUGH_DATETIME).decode()
    except orjson.JSONEncodeError:
        # What orjson refuses but JSON can carry (integers beyond 64 bits, lone surrogates); NaN and Infinity
        # would be invalid JSON for strict clients and still fail here (orjson writes them as null).
        return json.dumps(frame, ensure_ascii=False, separators=(",", ":"), default=_default, allow_nan=False)


def error_frame(exc: GatewayError, request_id: RequestId) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "error",
        "id": request_id,
        "code": exc.code,
        "message": exc.message,
        "retryable": exc.retryable,
    }
    for key, value in exc.details.items():
        if key != "request_id" and value is not None and not (isinstance(value, float) and math.isnan(value)):
            frame[key] = value
    return frame
