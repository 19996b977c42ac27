"""gateway.client against a real gateway app: streaming, queries, cancel mid-stream, typed errors, the token."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest

from gateway.client import (
    AuthError,
    ConflictError,
    Delta,
    GatewayClient,
    GatewayClientError,
    NotFoundError,
    UpstreamError,
    normalize_url,
)
from gateway.settings import Settings
from tests.conftest import Gateway
from tests.fake_anthropic import FakeAnthropic, Reply


def url_of(gateway: Gateway) -> str:
    return str(gateway.client.make_url("/gateway"))


async def test_chat_streams_deltas_and_ends_with_usage(gateway: Gateway, fake: FakeAnthropic) -> None:
    fake.queue(Reply(text="Hello there, friend.", thinking="A greeting.", input_tokens=120, output_tokens=9))
    async with GatewayClient.connect(url_of(gateway)) as gw:
        reply = gw.chat("hi")
        seen = [delta async for delta in reply]
        assert "".join(d.text for d in seen if not d.is_thinking) == "Hello there, friend."
        assert "".join(d.text for d in seen if d.is_thinking) == "A greeting."
        assert seen[0] == Delta("thinking", "A ")  # thinking comes first, on its own deltas
        end = reply.end
        assert end is not None and end.status == "complete" and end.stop_reason == "end_turn"
        assert end.usage.input_tokens == 120 and end.usage.output_tokens == 9
        assert end.cost.priced and end.cost.total is not None and end.cost.total > 0
        assert reply.session_created and end.session_id == reply.session_id and end.message_id == reply.message_id
        assert reply.model == "claude-sonnet-5-5"

        again = gw.chat("and again", session_id=reply.session_id, max_tokens=64)
        assert await again.text() == "You said: and again"
        assert not again.session_created and fake.requests[-1].body["max_tokens"] == 64
        history = await gw.history(reply.session_id)
        assert [m["role"] for m in history["messages"]] == ["user", "assistant"] * 2
        listed = await gw.sessions()
        assert [s["sessionId"] for s in listed["sessions"]] == [reply.session_id]
        usage = await gw.usage(group_by="model")
        assert usage["perModel"]["claude-sonnet-5-5"]["requestCount"] == 2
        inspection = await gw.inspect(reply.session_id, content="draft")
        assert inspection["type"] == "context.inspection" and inspection["totals"]["tokenEstimate"] > 0
        assert (await gw.delete_session(reply.session_id))["type"] == "session.deleted"
        with pytest.raises(NotFoundError) as missing:
            await gw.history(reply.session_id)
        assert missing.value.code == "SESSION_NOT_FOUND" and not missing.value.retryable


async def test_cancel_and_queries_are_answered_while_a_reply_streams(gateway: Gateway, fake: FakeAnthropic) -> None:
    fake.queue(Reply(text="one two three four five", hold_after_deltas=2))
    async with GatewayClient.connect(url_of(gateway)) as gw:
        reply = gw.chat("tell me a long story")
        got: list[str] = []

        async def read() -> None:
            async for delta in reply:
                got.append(delta.text)

        reader = asyncio.create_task(read())
        await fake.wait_held()
        assert reply.session_id is not None
        # The background reader routes answers by id, so a query does not wait for the stream to end.
        assert (await gw.ping())["type"] == "pong"
        assert await reply.cancel() is True
        await reader
        assert reply.end is not None and reply.end.status == "cancelled" and reply.end.stop_reason == "cancelled"
        assert "".join(got).endswith("one two ")
        assert await reply.cancel() is False  # over already
        with pytest.raises(ConflictError) as nothing:
            await gw.cancel()
        assert nothing.value.code == "NOTHING_TO_CANCEL"
        history = await gw.history(reply.session_id)
        assert history["messages"][-1]["status"] == "cancelled"


async def test_errors_are_typed_and_carry_the_code(gateway: Gateway, fake: FakeAnthropic) -> None:
    async with GatewayClient.connect(url_of(gateway)) as gw:
        with pytest.raises(NotFoundError) as not_found:
            await gw.chat("hi", session_id="nope").text()
        assert not_found.value.code == "SESSION_NOT_FOUND" and not_found.value.session_id == "nope"
        fake.queue(Reply(text="partial answer then boom", error_after_deltas=2))
        reply = gw.chat("fail midway")
        with pytest.raises(UpstreamError) as upstream:
            async for _ in reply:
                pass
        assert upstream.value.code == "OVERLOADED" and upstream.value.retryable
        assert upstream.value.partial_text == "partial answer "
        assert reply.error is upstream.value and reply.end is None
        assert isinstance(upstream.value, GatewayClientError)


async def test_a_resent_idempotency_key_answers_the_stored_reply(gateway: Gateway, fake: FakeAnthropic) -> None:
    async with GatewayClient.connect(url_of(gateway)) as gw:
        first = gw.chat("once only", idempotency_key="k-1")
        assert await first.text() == "You said: once only"
        again = gw.chat("once only", idempotency_key="k-1")
        assert await again.text() == "You said: once only"
        assert again.state is not None and again.state["duplicate"] is True
        assert len(fake.requests) == 1


async def test_token_header_and_its_absence(
    gateway_factory: Callable[[Settings], Awaitable[Gateway]], settings: Settings
) -> None:
    gateway = await gateway_factory(replace(settings, token="s3cret-token-value"))
    with pytest.raises(AuthError) as wrong:
        async with GatewayClient.connect(url_of(gateway), token="wrong"):
            pass
    assert wrong.value.code == "UNAUTHORIZED"
    async with GatewayClient.connect(url_of(gateway)) as anonymous:
        with pytest.raises(AuthError):
            await anonymous.sessions()
        assert anonymous.closed
    async with GatewayClient.connect(url_of(gateway), token="s3cret-token-value") as gw:
        assert (await gw.sessions())["sessions"] == []


def test_urls_people_type_are_accepted() -> None:
    assert normalize_url("127.0.0.1:3271") == "ws://127.0.0.1:3271/gateway"
    assert normalize_url("http://localhost:3271/") == "ws://localhost:3271/gateway"
    assert normalize_url("https://gw.example") == "wss://gw.example/gateway"
    assert normalize_url("ws://h:1/gateway") == "ws://h:1/gateway"


def test_every_gateway_error_code_has_a_client_family() -> None:
    """A code added to gateway/errors.py must get its family here too, or clients would see it as a ServerError."""
    from gateway import errors
    from gateway.client.errors import FAMILIES

    def codes(cls: type[errors.GatewayError]) -> set[str]:
        return {cls.code}.union(*(codes(sub) for sub in cls.__subclasses__()))

    assert codes(errors.GatewayError) <= set(FAMILIES)
