"""What a client reads in a refusal, and how the times it sends are read: exact, on any machine's time zone."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from aiohttp import ClientWebSocketResponse

from gateway.errors import GatewayError
from gateway.protocol import dump, parse_frame, parse_time
from tests.conftest import request

KNOWN = (
    "chat.send, chat.tool.approve, chat.tool.result, session.pending, chat.cancel, context.inspect, session.compact, "
    "usage.query, session.list, session.history, session.delete, agent.list, auth, ping"
)


def refusal(text: str) -> tuple[str, str, str | None]:
    with pytest.raises(GatewayError) as info:
        parse_frame(text, max_content_chars=100)
    return info.value.code, info.value.message, info.value.details.get("field")


@pytest.mark.parametrize(
    ("frame", "message", "field"),
    [
        ('{"type":"chat.send","content":5}', "chat.send: field 'content' must be a string", "content"),
        (
            '{"type":"chat.send","content":"hi","maxTokens":"9"}',
            "chat.send: field 'maxTokens' must be an integer",
            "maxTokens",
        ),
        (
            '{"type":"chat.send","content":"hi","maxTokens":true}',
            "chat.send: field 'maxTokens' must be an integer",
            "maxTokens",
        ),
        (
            '{"type":"chat.cancel","sessionId":"s","sendId":[]}',
            "chat.cancel: field 'sendId' must be a string or an integer",
            "sendId",
        ),
        (
            '{"type":"chat.send","content":"hi","tools":{"name":"x"}}',
            "chat.send: field 'tools' must be a list",
            "tools",
        ),
        (
            '{"type":"chat.tool.result","toolUseId":"t","content":7}',
            "chat.tool.result: field 'content' must be a string or a list",
            "content",
        ),
        (
            '{"type":"context.inspect","sessionId":"s","exact":"yes"}',
            "context.inspect: field 'exact' must be a boolean",
            "exact",
        ),
        ('{"type":"chat.send","content":"  "}', "chat.send: field 'content' must not be empty", "content"),
        (
            '{"type":"chat.send","content":"hi","maxTokens":0}',
            "chat.send: field 'maxTokens' must be at least 1",
            "maxTokens",
        ),
        (
            '{"type":"chat.send","content":"hi","maxTokens":1000001}',
            "chat.send: field 'maxTokens' must be at most 1000000",
            "maxTokens",
        ),
        (
            '{"type":"usage.query","groupBy":"week"}',
            "usage.query: field 'groupBy' must be one of model, day, session, agent, key",
            "groupBy",
        ),
        (
            '{"type":"chat.send","content":"a\\u0000b"}',
            "chat.send: field 'content' must not contain NUL characters (U+0000)",
            "content",
        ),
        (
            '{"type":"chat.send","content":"a\\ud800"}',
            "chat.send: field 'content' contains a lone UTF-16 surrogate (like \\ud800), not text",
            "content",
        ),
        ('{"type":"session.delete"}', "session.delete: field 'sessionId' is required", "sessionId"),
        ("[1]", "frame must be a JSON object", None),
        (
            '{"type":"ping","id":true}',
            "field 'id' must be a string (at most 256 characters, no NUL or lone surrogates) or an integer",
            "id",
        ),
        ('{"id":1}', "field 'type' is required and must be a string", "type"),
        ('{"type":"chat.nope"}', "unknown type 'chat.nope'; known: " + KNOWN, "type"),
        ('{"type":"' + "y" * 65 + '"}', "unknown type '" + "y" * 64 + "...'; known: " + KNOWN, "type"),
        ('{"type":"' + "z" * 64 + '"}', "unknown type '" + "z" * 64 + "'; known: " + KNOWN, "type"),
        (
            '{"type":"chat.tool.result","toolUseId":"t","content":[{"type":"video"}]}',
            'chat.tool.result: content[0] must be {"type": "text", "text": ...} or a base64 image block',
            "content",
        ),
        ('{"type":"chat.send","content":"' + "x" * 101 + '"}', None, "content"),
    ],
)
def test_a_refusal_says_which_field_and_why(frame: str, message: str | None, field: str | None) -> None:
    code, said, named = refusal(frame)
    assert named == field
    if message is None:
        assert (code, said) == ("MESSAGE_TOO_LARGE", "chat.send: field 'content' has 101 characters; the limit is 100")
    else:
        assert (code, said) == ("INVALID_MESSAGE", message)


def test_a_tool_results_text_blocks_count_against_the_content_limit_and_its_images_do_not() -> None:
    def result(*texts: str, image: bool = False) -> str:
        blocks = [{"type": "text", "text": text} for text in texts]
        if image:
            blocks.append({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 500}})
        return json.dumps({"type": "chat.tool.result", "toolUseId": "t", "content": blocks})

    too_long = "chat.tool.result: field 'content' has 101 characters; the limit is 100"
    assert refusal(result("x" * 60, "y" * 41)) == ("MESSAGE_TOO_LARGE", too_long, "content")
    accepted = parse_frame(result("x" * 60, "y" * 40, image=True), max_content_chars=100)
    assert [block["type"] for block in accepted.get("content")] == ["text", "text", "image"]


async def test_a_refused_frame_is_answered_with_exactly_the_documented_fields(ws: ClientWebSocketResponse) -> None:
    """The parser remembers the refused frame's id internally; the client reads it as `id` and `requestId`, nothing
    else of the parser's bookkeeping, and no field without a value."""
    answer = await request(ws, {"type": "chat.send", "id": "r1", "content": 5})
    assert answer == {
        "type": "error",
        "id": "r1",
        "requestId": "r1",
        "code": "INVALID_MESSAGE",
        "message": "chat.send: field 'content' must be a string",
        "retryable": False,
        "field": "content",
    }


@pytest.fixture
def new_york() -> Iterator[None]:
    """The machine's local time zone is not UTC: a time without an offset must still be read as UTC."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "America/New_York")
        time.tzset()
        yield
    time.tzset()


@pytest.mark.usefixtures("new_york")
@pytest.mark.parametrize(
    ("text", "moment"),
    [
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),  # a date alone is its midnight UTC
        ("2026-11-01Z", datetime(2026, 11, 1, tzinfo=UTC)),  # so is a date marked UTC
        ("2026-11-01T10:00:00", datetime(2026, 11, 1, 10, tzinfo=UTC)),
        ("2026-11-01T10:00:00Z", datetime(2026, 11, 1, 10, tzinfo=UTC)),
        ("2026-11-01T10:00:00+02:00", datetime(2026, 11, 1, 8, tzinfo=UTC)),
    ],
)
def test_times_are_read_as_utc(text: str, moment: datetime) -> None:
    parsed = parse_time(text, "since")
    assert parsed is not None
    assert (parsed, parsed.tzinfo, parsed.hour) == (moment, UTC, moment.hour)


@pytest.mark.usefixtures("new_york")
def test_frames_write_times_in_utc_whatever_the_machines_zone() -> None:
    frame = {"type": "session.created", "createdAt": datetime(2026, 11, 1, 10, 0, 0, 123456, tzinfo=UTC)}
    assert dump(frame) == '{"type":"session.created","createdAt":"2026-11-01T10:00:00.123456Z"}'


def test_a_time_that_is_not_one_names_its_field() -> None:
    with pytest.raises(GatewayError) as info:
        parse_time("last tuesday", "until")
    assert (info.value.code, info.value.details["field"]) == ("INVALID_MESSAGE", "until")
    assert info.value.message == "field 'until' must be an ISO 8601 date or time"
    assert parse_time(None, "until") is None
