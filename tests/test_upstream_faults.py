"""Every upstream fault, driven through the fake Anthropic server and the real SDK: one documented code, retries
only before the first token, partial text saved after it, and exactly one terminal frame."""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse

from gateway.settings import Settings
from tests.conftest import Gateway, chat, deltas, request
from tests.fake_anthropic import FakeAnthropic, Reply

Factory = Callable[[Settings], Awaitable[Gateway]]
TEXT = "one two three four five"


def message_requests(fake: FakeAnthropic) -> int:
    return len([r for r in fake.requests if r.path == "/v1/messages"])


async def _fails(ws: ClientWebSocketResponse, code: str, retryable: bool, **send: Any) -> dict[str, Any]:
    """Send, expect the stream to end in one `error` frame with this code; check nothing follows it."""
    frames = await chat(ws, "hello", **send)
    error = frames[-1]
    assert error["type"] == "error", frames
    assert (error["code"], error["retryable"]) == (code, retryable), error
    assert [f["type"] for f in frames].count("error") == 1
    assert (await request(ws, {"type": "ping", "id": "after"}))["type"] == "pong"  # no second terminal frame
    history = await request(ws, {"type": "session.history", "sessionId": error["sessionId"]})
    reply = history["messages"][-1]
    assert (reply["status"], reply["errorCode"]) == ("failed", code)
    error["_frames"] = frames
    error["_reply"] = reply
    return error


@pytest.mark.parametrize(
    ("reply", "code", "retryable", "attempts"),
    [
        (Reply(status=403), "UPSTREAM_AUTH", False, 1),
        (Reply(status=400), "UPSTREAM_BAD_REQUEST", False, 1),
        (Reply(status=413), "UPSTREAM_BAD_REQUEST", False, 1),
        (Reply(status=429, retry_after="0"), "RATE_LIMITED", True, 3),
        (Reply(status=529), "OVERLOADED", True, 3),
        (Reply(status=500), "UPSTREAM_ERROR", True, 3),
        (Reply(status=503), "UPSTREAM_ERROR", True, 3),
    ],
)
async def test_status_codes_map_and_only_transient_ones_are_retried(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, reply: Reply, code: str, retryable: bool, attempts: int
) -> None:
    fake.default = reply
    await _fails(ws, code, retryable)
    assert message_requests(fake) == attempts  # first try + AGENTSPACE_UPSTREAM_RETRIES (2) when retryable


async def test_wrong_api_key_is_upstream_auth(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    ws = await (await gateway_factory(settings.with_overrides(anthropic_api_key="sk-wrong"))).ws()
    error = await _fails(ws, "UPSTREAM_AUTH", False)
    assert error["upstreamStatus"] == 401
    assert message_requests(fake) == 1


async def test_retired_model_is_model_not_found(ws: ClientWebSocketResponse, fake: FakeAnthropic) -> None:
    error = await _fails(ws, "MODEL_NOT_FOUND", False, model="claude-sonnet-4")
    assert error["upstreamStatus"] == 404
    assert message_requests(fake) == 1


async def test_retry_after_is_honoured(gateway_factory: Factory, settings: Settings, fake: FakeAnthropic) -> None:
    ws = await (await gateway_factory(settings.with_overrides(upstream_retry_max_s=2.0))).ws()
    fake.queue(Reply(status=429, retry_after="0.4"), Reply(text="at last"))
    started = time.monotonic()
    frames = await chat(ws, "hello")
    assert frames[-1]["type"] == "chat.stream.end" and deltas(frames) == "at last"
    assert message_requests(fake) == 2
    assert time.monotonic() - started >= 0.4  # waited as told (the fixture's own backoff is 0.05 s at most)


async def test_retry_after_beyond_the_max_wait_fails_fast(ws: ClientWebSocketResponse, fake: FakeAnthropic) -> None:
    fake.default = Reply(status=429, retry_after="30")
    error = await _fails(ws, "RATE_LIMITED", True)
    assert error["retryAfter"] == 30.0  # the client decides whether to wait that long
    assert message_requests(fake) == 1


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again on leaving: nothing listens there


async def test_connection_refused_is_upstream_unavailable(gateway_factory: Factory, settings: Settings) -> None:
    base = f"http://127.0.0.1:{_closed_port()}"
    ws = await (await gateway_factory(settings.with_overrides(anthropic_base_url=base))).ws()
    error = await _fails(ws, "UPSTREAM_UNAVAILABLE", True)
    assert error["partialText"] == ""


async def test_silence_before_the_first_token_is_retried_then_times_out(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    ws = await (await gateway_factory(settings.with_overrides(upstream_read_timeout_s=0.2))).ws()
    fake.default = Reply(text=TEXT, thinking=None, hold_after_deltas=0)
    await _fails(ws, "UPSTREAM_TIMEOUT", True)
    assert message_requests(fake) == 3
    assert await fake.wait_stream_closed(3) is True  # we hung up on each silent stream


async def test_silence_after_the_first_token_keeps_the_partial_text(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    # The silence must come from the hold, never from a loaded machine between two deltas: a margin of 0.5 s.
    ws = await (await gateway_factory(settings.with_overrides(upstream_read_timeout_s=0.5))).ws()
    fake.queue(Reply(text=TEXT, hold_after_deltas=2))
    error = await _fails(ws, "UPSTREAM_TIMEOUT", True)
    assert error["partialText"] == "one two " == deltas(error["_frames"]) == error["_reply"]["text"]
    assert message_requests(fake) == 1  # never retried once text was relayed


async def test_whole_turn_deadline(gateway_factory: Factory, settings: Settings, fake: FakeAnthropic) -> None:
    # The deadline must pass during the hold, not while a loaded 2-core machine is still reaching it (a few tens of
    # ms when idle): a second of margin, which is also how long this test waits.
    ws = await (await gateway_factory(settings.with_overrides(upstream_total_timeout_s=1.0))).ws()
    fake.queue(Reply(text=TEXT, hold_after_deltas=1))
    error = await _fails(ws, "UPSTREAM_TIMEOUT", True)
    assert error["message"] == "the request took longer than the total upstream timeout"
    assert error["partialText"] == "one " == error["_reply"]["text"]
    assert await fake.wait_stream_closed() is True  # we hung up on the held stream


async def test_error_event_mid_stream_is_overloaded_with_partial_text(
    ws: ClientWebSocketResponse, fake: FakeAnthropic
) -> None:
    fake.queue(Reply(text=TEXT, error_after_deltas=3))
    error = await _fails(ws, "OVERLOADED", True)
    assert error["partialText"] == "one two three " == error["_reply"]["text"]
    assert message_requests(fake) == 1


async def test_truncated_stream_is_upstream_error_with_partial_text(
    ws: ClientWebSocketResponse, fake: FakeAnthropic
) -> None:
    fake.queue(Reply(text=TEXT, truncate_after_deltas=2))
    error = await _fails(ws, "UPSTREAM_ERROR", True)
    assert error["partialText"] == "one two " == error["_reply"]["text"]
    assert message_requests(fake) == 1


async def test_truncation_before_the_first_token_is_retried(ws: ClientWebSocketResponse, fake: FakeAnthropic) -> None:
    fake.queue(Reply(text=TEXT, thinking=None, truncate_after_deltas=0), Reply(text=TEXT))
    frames = await chat(ws, "hello")
    assert frames[-1]["type"] == "chat.stream.end" and deltas(frames) == TEXT
    assert message_requests(fake) == 2
