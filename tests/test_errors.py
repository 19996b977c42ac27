"""Bad frames get error frames with stable codes, and the connection stays open."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import ClientWebSocketResponse

from gateway.settings import Settings
from tests.conftest import Gateway, chat, request
from tests.fake_anthropic import FakeAnthropic, Reply


@pytest.mark.parametrize(
    ("raw", "code", "field"),
    [
        ("not json", "PARSE_ERROR", None),
        ("[1, 2]", "INVALID_MESSAGE", None),
        ('{"id": "x"}', "INVALID_MESSAGE", "type"),
        ('{"type": "chat.dance", "id": "x"}', "INVALID_MESSAGE", "type"),
        ('{"type": "chat.send", "id": "x"}', "INVALID_MESSAGE", "content"),
        ('{"type": "chat.send", "id": "x", "content": ""}', "INVALID_MESSAGE", "content"),
        ('{"type": "chat.send", "id": "x", "content": "   "}', "INVALID_MESSAGE", "content"),
        ('{"type": "chat.send", "id": "x", "content": 5}', "INVALID_MESSAGE", "content"),
        ('{"type": "chat.send", "id": "x", "content": "hi", "maxTokens": "many"}', "INVALID_MESSAGE", "maxTokens"),
        ('{"type": "chat.send", "id": "x", "content": "hi", "maxTokens": true}', "INVALID_MESSAGE", "maxTokens"),
        ('{"type": "chat.send", "id": "x", "content": "hi", "maxTokens": 0}', "INVALID_MESSAGE", "maxTokens"),
        ('{"type": "chat.send", "id": "x", "content": "hi", "sessionId": 12}', "INVALID_MESSAGE", "sessionId"),
        ('{"type": "session.history", "id": "x"}', "INVALID_MESSAGE", "sessionId"),
        ('{"type": "usage.query", "id": "x", "groupBy": "week"}', "INVALID_MESSAGE", "groupBy"),
        ('{"type": "usage.query", "id": "x", "since": "yesterday"}', "INVALID_MESSAGE", "since"),
        ('{"type": "session.list", "id": "x", "cursor": "garbage!"}', "INVALID_MESSAGE", "cursor"),
    ],
)
async def test_bad_frames_get_errors_and_connection_survives(
    ws: ClientWebSocketResponse, raw: str, code: str, field: str | None
) -> None:
    await ws.send_str(raw)
    frame = await ws.receive_json()
    assert frame["type"] == "error"
    assert frame["code"] == code
    assert frame["retryable"] is False
    assert frame["message"]
    if field is not None:
        assert field in frame["message"]
        assert frame.get("field") == field
    if raw.startswith('{"type"') or raw.startswith('{"id"'):
        assert frame["id"] == "x"
    else:
        assert frame["id"] is None
    # Still open and serving.
    pong = await request(ws, {"type": "ping", "id": 1})
    assert pong == {"type": "pong", "id": 1, "requestId": 1}


async def test_unusable_id_is_refused(ws: ClientWebSocketResponse) -> None:
    frame = await request(ws, {"type": "ping", "id": {"nested": True}})
    assert frame["code"] == "INVALID_MESSAGE" and frame["id"] is None


async def test_missing_api_key_keeps_everything_else_working(
    gateway_factory: object, settings: Settings, fake: FakeAnthropic
) -> None:
    gateway: Gateway = await gateway_factory(settings.with_overrides(anthropic_api_key=None))  # type: ignore[operator]
    ws = await gateway.ws()
    frames = await chat(ws, "hello")
    assert [f["type"] for f in frames] == ["error"]
    assert frames[0]["code"] == "MISSING_API_KEY"
    assert fake.requests == []
    listed = await request(ws, {"type": "session.list"})
    assert listed["sessions"] == []  # nothing half-written
    report = await request(ws, {"type": "usage.query"})
    assert report["type"] == "usage.report"
    health = await gateway.client.get("/healthz")
    assert (await health.json())["apiKeyConfigured"] is False
    await ws.close()


async def test_key_from_vault_is_used(
    gateway_factory: object, settings: Settings, fake: FakeAnthropic, tmp_path: Path
) -> None:
    from gateway.chat.key_vault import Vault

    Vault(settings.vault_path).set("anthropic", "test-key")
    gateway: Gateway = await gateway_factory(settings.with_overrides(anthropic_api_key=None))  # type: ignore[operator]
    ws = await gateway.ws()
    frames = await chat(ws, "hello")
    assert frames[-1]["type"] == "chat.stream.end"
    assert fake.requests[-1].headers["authorization"] == "Bearer test-key"
    await ws.close()


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (401, "UPSTREAM_AUTH", False),
        (404, "MODEL_NOT_FOUND", False),
        (400, "UPSTREAM_BAD_REQUEST", False),
    ],
)
async def test_upstream_errors_map_to_stable_codes(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, status: int, code: str, retryable: bool
) -> None:
    fake.queue(Reply(status=status))
    frames = await chat(ws, "hello")
    assert [f["type"] for f in frames] == ["session.created", "chat.stream.start", "error"]
    assert frames[-1]["code"] == code and frames[-1]["retryable"] is retryable
    assert frames[-1]["id"] == "t1"
    history = await request(ws, {"type": "session.history", "sessionId": frames[0]["sessionId"]})
    # The user turn is kept (test_chat.py reads it while the upstream holds); the failed reply says why.
    assert history["messages"][0]["text"] == "hello"
    assert history["messages"][1]["status"] == "failed" and history["messages"][1]["errorCode"] == code


async def test_retryable_upstream_error_is_retried_then_succeeds(
    ws: ClientWebSocketResponse, fake: FakeAnthropic
) -> None:
    fake.queue(Reply(status=529), Reply(status=429, retry_after="0"), Reply(text="finally"))
    frames = await chat(ws, "hello")
    assert frames[-1]["type"] == "chat.stream.end"
    assert "".join(f["delta"] for f in frames if f["type"] == "chat.stream.delta") == "finally"
    assert len([r for r in fake.requests if r.path == "/v1/messages"]) == 3


async def test_retries_are_bounded(ws: ClientWebSocketResponse, fake: FakeAnthropic) -> None:
    fake.queue(*(Reply(status=529) for _ in range(5)))
    frames = await chat(ws, "hello")
    assert frames[-1]["code"] == "OVERLOADED" and frames[-1]["retryable"] is True
    assert len([r for r in fake.requests if r.path == "/v1/messages"]) == 3  # first try + 2 retries
