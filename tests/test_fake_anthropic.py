"""The fake is only worth trusting if the real SDK parses it exactly as it would the real API."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import pytest
from anthropic.types import MessageParam

from tests.fake_anthropic import FakeAnthropic, Reply

MODEL = "claude-sonnet-5-5"
HI: list[MessageParam] = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic()
    await server.start()
    yield server
    await server.close()


@pytest.fixture
def url(fake: FakeAnthropic) -> str:
    assert fake.base_url is not None
    return fake.base_url


def make_client(url: str, max_retries: int = 0) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key="test", base_url=url, max_retries=max_retries)


@pytest.fixture
async def client(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[anthropic.AsyncAnthropic]:
    # An empty config dir keeps any developer profile in ~/.config/anthropic out of the tests.
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path))
    c = make_client(url)
    yield c
    await c.close()


async def test_stream_thinking_text_usage(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.queue(
        Reply(text="Hello there, world", input_tokens=11, cache_creation_5m=3, cache_creation_1h=4, cache_read=5)
    )
    deltas: list[str] = []
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=HI) as s:
        async for event in s:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                deltas.append(event.delta.text)
        msg = await s.get_final_message()
    assert deltas == ["Hello ", "there, ", "world"]
    thinking, text = msg.content
    assert thinking.type == "thinking" and thinking.thinking == "Thinking it over." and thinking.signature
    assert text.type == "text" and text.text == "".join(deltas)
    assert msg.id.startswith("msg_") and msg.model == MODEL and msg.role == "assistant"
    assert msg.stop_reason == "end_turn"
    u = msg.usage
    assert (u.input_tokens, u.cache_creation_input_tokens, u.cache_read_input_tokens) == (11, 7, 5)
    assert u.cache_creation is not None
    assert (u.cache_creation.ephemeral_5m_input_tokens, u.cache_creation.ephemeral_1h_input_tokens) == (3, 4)
    assert u.output_tokens == 6  # 3 text deltas + 3 thinking deltas
    req = await fake.wait_for_request()
    assert req.headers["authorization"] == "Bearer test"
    assert req.body["stream"] is True and req.body["messages"] == HI
    assert await fake.wait_stream_closed() is False and fake.streams_completed == 1


async def test_echo_without_thinking_matches_count_tokens(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic
) -> None:
    fake.default = Reply(thinking=None, chunk_words=2, stop_reason="max_tokens")
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=HI, system="be brief") as s:
        msg = await s.get_final_message()
    assert [b.type for b in msg.content] == ["text"]
    assert await s.get_final_text() == "You said: hi"
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 2
    counted = await client.messages.count_tokens(model=MODEL, messages=HI, system="be brief")
    assert counted.input_tokens == msg.usage.input_tokens > 0
    fake.count_tokens_value = 42
    assert (await client.messages.count_tokens(model=MODEL, messages=HI)).input_tokens == 42
    assert [r.path for r in fake.requests][-2:] == ["/v1/messages/count_tokens"] * 2


async def test_non_streaming_create(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    msg = await client.messages.create(model=MODEL, max_tokens=100, messages=HI)
    assert [b.type for b in msg.content] == ["thinking", "text"]
    assert msg.content[1].type == "text" and msg.content[1].text == "You said: hi"


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (401, anthropic.AuthenticationError),
        (429, anthropic.RateLimitError),
        (529, anthropic.OverloadedError),
        (500, anthropic.InternalServerError),
    ],
)
async def test_http_errors(
    fake: FakeAnthropic, client: anthropic.AsyncAnthropic, status: int, exc: type[anthropic.APIStatusError]
) -> None:
    fake.queue(Reply(status=status, retry_after="7"))
    with pytest.raises(exc) as info:
        await client.messages.create(model=MODEL, max_tokens=100, messages=HI)
    assert info.value.status_code == status
    assert info.value.response.headers["retry-after"] == "7"


async def test_retry_after_is_honoured(fake: FakeAnthropic, url: str) -> None:
    fake.queue(Reply(status=529, retry_after="0.01"))
    c = make_client(url, max_retries=1)
    msg = await c.messages.create(model=MODEL, max_tokens=100, messages=HI)
    await c.close()
    assert msg.content[-1].type == "text" and len(fake.requests) == 2


async def test_wrong_key_and_unknown_model(url: str, client: anthropic.AsyncAnthropic, fake: FakeAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.create(model="claude-sonnet-4", max_tokens=100, messages=HI)
    fake.api_key = "other"
    with pytest.raises(anthropic.AuthenticationError) as info:
        await client.messages.count_tokens(model=MODEL, messages=HI)
    assert info.value.body == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid x-api-key"},
    }


async def test_mid_stream_error(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.queue(Reply(error_after_deltas=1))
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=HI) as s:
            async for event in s:
                if event.type == "text":
                    texts.append(event.text)
    assert texts == ["You "]
    assert info.value.status_code == 200
    assert isinstance(info.value.body, dict) and info.value.body["error"]["type"] == "overloaded_error"
    assert await fake.wait_stream_closed() is False


async def test_truncated_stream(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.queue(Reply(truncate_after_deltas=2, output_tokens_before_error=4))
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=HI) as s:
        msg = await s.get_final_message()
    assert msg.stop_reason is None
    assert msg.content[-1].type == "text" and msg.content[-1].text == "You said: "
    assert msg.usage.output_tokens == 4


async def test_hold_then_client_cancels(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.queue(Reply(hold_after_deltas=1))

    async def consume() -> None:
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=HI) as s:
            await s.get_final_message()

    task = asyncio.create_task(consume())
    await fake.wait_held()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await fake.wait_stream_closed() is True
    assert (fake.streams_cancelled, fake.streams_completed) == (1, 0)


async def test_hold_then_release(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.queue(Reply(hold_after_deltas=2), Reply(hold_after_deltas=0))

    async def consume() -> str:
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=HI) as s:
            return await s.get_final_text()

    task = asyncio.create_task(consume())
    await fake.wait_held()
    assert not task.done()
    fake.release()
    assert await task == "You said: hi"
    assert await fake.wait_stream_closed() is False
    fake.release()  # banked: nobody holds now, so the next hold passes straight through
    assert await consume() == "You said: hi"
    assert fake.streams_completed == 2


async def test_close_does_not_wait_for_held_streams(fake: FakeAnthropic, client: anthropic.AsyncAnthropic) -> None:
    fake.queue(Reply(hold_after_deltas=0))
    async with client.messages.stream(model=MODEL, max_tokens=100, messages=HI) as s:
        await fake.wait_held()
        async with asyncio.timeout(2):
            await fake.close()
        assert (await s.get_final_message()).stop_reason == "end_turn"
