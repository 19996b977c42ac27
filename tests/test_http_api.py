"""The Anthropic-compatible HTTP API, driven by the real `anthropic` SDK as an app would drive the API: streaming and
not, tools, thinking, prompt caching, count_tokens, models, and the errors an SDK must see in Anthropic's shape."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anthropic
import pytest

from gateway.settings import Settings
from tests.fake_anthropic import MODELS, FakeAnthropic, Reply, tool_reply, tool_use
from tests.http_api import MODEL, Api, Factory, assistant, make_api, user


@pytest.fixture
async def api(gateway_factory: Factory, settings: Settings) -> AsyncIterator[Api]:
    made = await make_api(gateway_factory, settings)
    yield made
    await made.sdk.close()


async def test_a_message_as_the_api_answers_it_stored_and_accounted(api: Api, fake: FakeAnthropic) -> None:
    fake.queue(Reply(text="WAL keeps a log.", input_tokens=1200, output_tokens=30, cache_read=4096))
    raw = await api.sdk.messages.with_raw_response.create(model=MODEL, max_tokens=256, messages=[user("What is WAL?")])
    message = await raw.parse()
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[1].text == "WAL keeps a log." and message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (1200, 4096)
    session_id = raw.headers["x-agentspace-session"]
    assert raw.headers["request-id"].startswith("req_")  # the upstream's, relayed
    # What the upstream got: our key, not the app's.
    sent = fake.requests[-1]
    assert sent.headers["authorization"] == "Bearer test-key" and "x-api-key" not in sent.headers
    assert api.key not in json.dumps(sent.headers)
    assert await api.rows("select agent_id, title, message_count from sessions") == [("default", "What is WAL?", 2)]
    assert await api.rows("select role, status, text from messages order by seq") == [
        ("user", "complete", "What is WAL?"),
        ("assistant", "complete", "WAL keeps a log."),
    ]
    usage = await api.rows(
        "select u.session_id, u.status, u.input_tokens, u.output_tokens, u.cache_read_tokens, u.total_cost,"
        " u.upstream_message_id, k.name from usage_records u join api_keys k on k.id = u.key_id"
    )
    # 1200 x $2/M + 30 x $10/M + 4096 x $0.10/M (Sonnet 5.5), in nano-USD.
    assert usage == [(session_id, "complete", 1200, 30, 4096, 2_400_000 + 300_000 + 409_600, message.id, "sdk-app")]


async def test_a_stream_relays_every_event_as_the_upstream_sent_it(api: Api, fake: FakeAnthropic) -> None:
    fake.queue(Reply(text="one two three four", chunk_words=1))
    async with api.sdk.messages.stream(model=MODEL, max_tokens=256, messages=[user("count")]) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds.count("text") == 4 and kinds[-1] == "message_stop"
    assert final.content[-1].text == "one two three four"
    assert (await api.rows("select status, stop_reason, text from messages where role = 'assistant'")) == [
        ("complete", "end_turn", "one two three four")
    ]
    (row,) = await api.rows("select status, output_tokens, first_token_ms from usage_records")
    assert row[0] == "complete" and row[1] == final.usage.output_tokens and row[2] is not None


async def test_the_body_goes_upstream_byte_for_byte_with_beta_headers_and_query(api: Api, fake: FakeAnthropic) -> None:
    # Odd spacing, key order and fields the gateway does not know: none of it is its business.
    raw = (
        b'{ "max_tokens":64,  "model" : "claude-sonnet-5-5", "metadata": {"user_id": "u-1"},'
        b' "service_tier":"auto", "messages":[{"role":"user","content":"hi \\u00e9"}] }'
    )
    headers = {"x-api-key": api.key, "anthropic-version": "2023-06-01", "anthropic-beta": "context-1m-2025-08-07"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{api.base_url}/v1/messages?beta=true", data=raw, headers=headers) as response:
            assert response.status == 200
            await response.read()
    sent = fake.requests[-1]
    assert sent.raw == raw and sent.query == "beta=true"
    assert sent.headers["anthropic-beta"] == "context-1m-2025-08-07"
    assert sent.headers["anthropic-version"] == "2023-06-01"  # the app's, not the gateway's SDK default


async def test_unknown_fields_reach_the_upstream_which_judges_them(api: Api, fake: FakeAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as refused:
        await api.sdk.messages.create(
            model=MODEL, max_tokens=64, messages=[user("hi")], extra_body={"brand_new_option": {"on": True}}
        )
    assert fake.requests[-1].body["brand_new_option"] == {"on": True}
    assert refused.value.body["error"]["message"] == "brand_new_option: Extra inputs are not permitted"  # type: ignore[index]
    (row,) = await api.rows("select status, error_code from messages where role = 'assistant'")
    assert row == ("failed", "UPSTREAM_BAD_REQUEST")
    assert await api.rows("select count(*) from usage_records") == [(0,)]  # refused upstream: nothing billed


async def test_tools_round_trip_in_one_session(api: Api, fake: FakeAnthropic) -> None:
    weather = {"name": "get_weather", "description": "Weather in a city", "input_schema": {"type": "object"}}
    fake.queue(tool_reply(tool_use("get_weather", {"city": "Oslo"}, id="toolu_1"), text="Let me look."))
    fake.queue(Reply(text="It is cold in Oslo."))
    messages: list[dict[str, Any]] = [user("Weather in Oslo?")]
    first = await api.sdk.messages.create(model=MODEL, max_tokens=256, tools=[weather], messages=messages)
    assert first.stop_reason == "tool_use"
    call = first.content[-1]
    assert (call.type, call.name, call.input) == ("tool_use", "get_weather", {"city": "Oslo"})
    messages += [assistant(first.content), {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": call.id, "content": "-12 C"}]}]  # fmt: skip
    async with api.sdk.messages.stream(model=MODEL, max_tokens=256, tools=[weather], messages=messages) as stream:
        second = await stream.get_final_message()
    assert second.content[-1].text == "It is cold in Oslo."
    assert fake.refusals == []  # the tool_use / tool_result pairing reached the upstream intact
    assert fake.requests[-1].body["tools"] == [weather]
    stored = await api.rows("select session_id, role, content from messages order by seq")
    assert len({row[0] for row in stored}) == 1 and [row[1] for row in stored] == ["user", "assistant"] * 2
    tool_call = json.loads(stored[1][2]) if isinstance(stored[1][2], str) else stored[1][2]
    assert tool_call[-1] == {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}


async def test_thinking_replayed_as_received_continues_the_session(api: Api, fake: FakeAnthropic) -> None:
    fake.queue(Reply(text="First.", thinking="Let me think."), Reply(text="Second.", thinking="More thought."))
    thinking = {"type": "enabled", "budget_tokens": 1024}
    first = await api.sdk.messages.create(model=MODEL, max_tokens=2048, thinking=thinking, messages=[user("a")])
    assert first.content[0].type == "thinking" and first.content[0].signature
    messages = [user("a"), assistant(first.content), user("b")]
    second = await api.sdk.messages.create(model=MODEL, max_tokens=2048, thinking=thinking, messages=messages)
    assert second.content[0].thinking == "More thought." and fake.refusals == []
    assert fake.requests[-1].body["thinking"] == thinking
    assert await api.rows("select count(*), max(message_count) from sessions") == [(1, 4)]


async def test_prompt_caching_markers_pass_and_cache_tokens_are_priced(api: Api, fake: FakeAnthropic) -> None:
    fake.queue(Reply(input_tokens=10, output_tokens=5, cache_creation_1h=2000, cache_read=3000))
    system = [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]
    reply = await api.sdk.messages.create(model=MODEL, max_tokens=64, system=system, messages=[user("hi")])
    assert reply.usage.cache_creation.ephemeral_1h_input_tokens == 2000
    assert fake.requests[-1].body["system"] == system
    (row,) = await api.rows(
        "select cache_write_1h_tokens, cache_read_tokens, cache_write_cost, total_cost from usage_records"
    )
    # 2000 x $4/M (1h write) + 3000 x $0.10/M (read) + 10 x $2/M + 5 x $10/M.
    assert row == (2000, 3000, 8_000_000, 8_000_000 + 300_000 + 20_000 + 50_000)


async def test_count_tokens_and_models_are_the_upstreams(api: Api, fake: FakeAnthropic) -> None:
    fake.count_tokens_value = 4321
    counted = await api.sdk.messages.count_tokens(model=MODEL, messages=[user("how long is this?")])
    assert counted.input_tokens == 4321
    assert fake.requests[-1].path == "/v1/messages/count_tokens"
    listed = [model.id async for model in api.sdk.models.list(limit=2)]
    assert listed == [m[0] for m in MODELS]  # two pages of two, fetched through the gateway
    assert (await api.sdk.models.retrieve("claude-opus-5-5")).display_name == "Claude Opus 5.5"
    with pytest.raises(anthropic.NotFoundError):
        await api.sdk.models.retrieve("claude-nope")
    assert await api.rows("select count(*) from usage_records") == [(0,)]  # free calls store nothing


async def test_a_wrong_key_is_refused_in_anthropics_shape(api: Api, fake: FakeAnthropic) -> None:
    for bad in ("sk-ant-api03-not-ours", "asg_not-a-key"):
        with pytest.raises(anthropic.AuthenticationError) as refused:
            await api.client(bad).messages.create(model=MODEL, max_tokens=8, messages=[user("hi")])
        assert refused.value.status_code == 401
        assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with pytest.raises(anthropic.AuthenticationError):
        await api.client(bad).models.list()
    assert fake.requests == []


async def test_529_and_429_from_upstream_are_relayed_as_they_came(api: Api, fake: FakeAnthropic) -> None:
    fake.queue(Reply(status=529), Reply(status=429, retry_after="7"))
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        await api.sdk.messages.create(model=MODEL, max_tokens=8, messages=[user("hi")])
    assert overloaded.value.status_code == 529 and overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(anthropic.RateLimitError) as limited:
        await api.sdk.messages.create(model=MODEL, max_tokens=8, messages=[user("hi")])
    assert limited.value.response.headers["retry-after"] == "7"
    assert len(fake.requests) == 2  # no retries of its own: the app's SDK decides
    assert await api.rows("select status, error_code from messages where role = 'assistant' order by created_at") == [
        ("failed", "OVERLOADED"),
        ("failed", "RATE_LIMITED"),
    ]


async def test_budget_refusal_is_a_429_that_says_not_to_retry(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    capped = await make_api(gateway_factory, settings, daily_cap=1_000_000)  # $0.001 a day
    with pytest.raises(anthropic.RateLimitError) as refused:
        await capped.sdk.messages.create(model=MODEL, max_tokens=4096, messages=[user("hi")])
    assert refused.value.response.headers["x-should-retry"] == "false"
    assert "key sdk-app's daily budget" in refused.value.message
    assert fake.requests == [] and await capped.rows("select count(*) from sessions") == [(0,)]
    await capped.sdk.close()


async def test_a_bad_body_and_a_foreign_origin_are_refused_before_anything(api: Api, fake: FakeAnthropic) -> None:
    async with aiohttp.ClientSession() as http:
        url, key = f"{api.base_url}/v1/messages", {"x-api-key": api.key}
        async with http.post(url, data=b"{not json", headers=key) as response:
            assert response.status == 400 and (await response.json())["error"]["type"] == "invalid_request_error"
        async with http.post(url, json={"model": MODEL, "max_tokens": 5}, headers=key) as response:
            assert (await response.json())["error"]["message"] == "messages: Field required"
        origin = {**key, "Origin": "https://evil.example"}
        async with http.post(url, json={"model": MODEL, "messages": [user("x")]}, headers=origin) as response:
            assert response.status == 403 and (await response.json())["error"]["type"] == "permission_error"
    assert fake.requests == []
