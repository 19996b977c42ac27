"""The fake refuses what the real API refuses (tests/api_rules.py), with the API's status, error type and message, so a
gateway bug that would break a real conversation breaks the tests too. Each rule is shown refusing a bad request."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest

from tests.api_rules import check_request, sign_thinking
from tests.fake_anthropic import FakeAnthropic, Reply

MODEL = "claude-sonnet-5-5"
THOUGHT = "Let me look that up."


def thinking(text: str = THOUGHT, signature: str | None = None) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": sign_thinking(text) if signature is None else signature}


def tool_use(tool_id: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": tool_id, "name": "lookup", "input": {"q": "x"}}


def tool_result(tool_id: str) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": tool_id, "content": "42"}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def valid_body() -> dict[str, Any]:
    """A tool-using conversation with signed thinking and a cache breakpoint, as a gateway would send it."""
    return {
        "model": MODEL,
        "max_tokens": 1024,
        "stream": True,
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "tools": [{"name": "lookup", "description": "Look it up", "input_schema": {"type": "object"}}],
        "messages": [
            {"role": "user", "content": "What is x?"},
            {"role": "assistant", "content": [thinking(), tool_use("toolu_1"), tool_use("toolu_2")]},
            {"role": "user", "content": [tool_result("toolu_1"), tool_result("toolu_2"), text("Thanks.")]},
            {"role": "assistant", "content": [thinking("Done."), text("x is 42.")]},
            {"role": "user", "content": [{"type": "text", "text": "And y?", "cache_control": {"type": "ephemeral"}}]},
        ],
    }


def changed(edit: Any) -> dict[str, Any]:
    body = valid_body()
    edit(body)
    return body


def messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = body["messages"]
    return result


TOOL_USE_UNANSWERED = (
    "messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: {ids}. Each `tool_use` "
    "block must have a corresponding `tool_result` block in the next message."
)
TOOL_RESULT_UNEXPECTED = (
    "messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: {id}. Each `tool_result` block "
    "must have a corresponding `tool_use` block in the previous message."
)

# (what is wrong, how the valid request is spoiled, the API's message)
REFUSALS: list[tuple[str, Any, str]] = [
    (
        "thinking that lost a streamed chunk",
        lambda b: messages(b)[1]["content"][0].update(thinking="up."),
        "messages.1.content.0: Invalid `signature` in `thinking` block",
    ),
    (
        "thinking with another block's signature",
        lambda b: messages(b)[3]["content"][0].update(signature=sign_thinking(THOUGHT)),
        "messages.3.content.0: Invalid `signature` in `thinking` block",
    ),
    (
        "thinking without its signature",
        lambda b: messages(b)[1]["content"][0].pop("signature"),
        "messages.1.content.0: Invalid `signature` in `thinking` block",
    ),
    (
        "a cache breakpoint on a thinking block",
        lambda b: messages(b)[3]["content"][0].update(cache_control={"type": "ephemeral"}),
        "messages.3.content.0.thinking.cache_control: Extra inputs are not permitted",
    ),
    (
        "a conversation that starts with the assistant",
        lambda b: messages(b).pop(0),
        'messages: first message must use the "user" role',
    ),
    (
        "two user turns in a row",
        lambda b: messages(b).insert(0, {"role": "user", "content": "Hello"}),
        'messages: roles must alternate between "user" and "assistant", but found multiple "user" roles in a row',
    ),
    (
        "two assistant turns in a row",
        lambda b: messages(b).insert(4, {"role": "assistant", "content": "More."}),
        'messages: roles must alternate between "user" and "assistant", but found multiple "assistant" roles in a row',
    ),
    (
        "a role that does not exist",
        lambda b: messages(b)[0].update(role="system"),
        "messages.0.role: Input should be 'user' or 'assistant'",
    ),
    (
        "a tool_use whose result is missing",
        lambda b: messages(b)[2]["content"].pop(1),
        TOOL_USE_UNANSWERED.format(i=1, ids="toolu_2"),
    ),
    (
        "tool results behind text, not immediately after",
        lambda b: messages(b)[2]["content"].insert(0, text("Here:")),
        TOOL_USE_UNANSWERED.format(i=1, ids="toolu_1, toolu_2"),
    ),
    (
        "a tool_use dropped from history while its result stays",
        lambda b: messages(b)[1]["content"].pop(2),
        TOOL_RESULT_UNEXPECTED.format(i=2, j=1, id="toolu_2"),
    ),
    (
        "a tool_use as the last turn",
        lambda b: messages(b).__delitem__(slice(2, None)),
        TOOL_USE_UNANSWERED.format(i=1, ids="toolu_1, toolu_2"),
    ),
    (
        "a tool_result in the first message",
        lambda b: messages(b)[0].update(content=[tool_result("toolu_0")]),
        TOOL_RESULT_UNEXPECTED.format(i=0, j=0, id="toolu_0"),
    ),
    ("no max_tokens", lambda b: b.pop("max_tokens"), "max_tokens: Field required"),
    ("max_tokens as text", lambda b: b.update(max_tokens="1024"), "max_tokens: Input should be a valid integer"),
    ("no model", lambda b: b.pop("model"), "model: Field required"),
    ("no messages", lambda b: b.pop("messages"), "messages: Field required"),
    ("an empty conversation", lambda b: b.update(messages=[]), "messages: at least one message is required"),
    (
        "temperature, which the current API version refuses",
        lambda b: b.update(temperature=0.5),
        "temperature: Extra inputs are not permitted",
    ),
    ("a misspelt field", lambda b: b.update(max_token=5), "max_token: Extra inputs are not permitted"),
    (
        "an empty text block",
        lambda b: messages(b)[3]["content"].append(text("")),
        "messages: text content blocks must be non-empty",
    ),
    (
        "a message with no content",
        lambda b: messages(b)[0].update(content=[]),
        "messages.0: all messages must have non-empty content except for the optional final assistant message",
    ),
    (
        "an empty system block",
        lambda b: b["system"].append(text("")),
        "system: text content blocks must be non-empty",
    ),
    (
        "five cache breakpoints",
        lambda b: [blk.update(cache_control={"type": "ephemeral"}) for blk in messages(b)[2]["content"]],
        "A maximum of 4 blocks with cache_control may be provided. Found 5.",
    ),
]


def test_the_valid_request_passes_every_rule() -> None:
    assert check_request(valid_body()) is None
    body = valid_body()
    for name in ("max_tokens", "stream"):
        body.pop(name)
    assert check_request(body, count_tokens=True) is None


@pytest.fixture
async def http(fake: FakeAnthropic) -> Any:
    async with aiohttp.ClientSession(base_url=str(fake.base_url), headers={"x-api-key": "test-key"}) as session:
        yield session


@pytest.mark.parametrize(("spoil", "message"), [(r[1], r[2]) for r in REFUSALS], ids=[r[0] for r in REFUSALS])
async def test_the_fake_refuses_what_the_api_refuses(
    fake: FakeAnthropic, http: aiohttp.ClientSession, spoil: Any, message: str
) -> None:
    fake.queue(Reply(text="queued"))
    async with http.post("/v1/messages", json=changed(spoil)) as refused:
        assert refused.status == 400
        assert await refused.json() == {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    assert fake.refusals == [message]
    # A refused request does no model work: the queued reply goes to the next valid one.
    async with http.post("/v1/messages", json={**valid_body(), "stream": False}) as accepted:
        assert accepted.status == 200
        assert (await accepted.json())["content"][-1] == text("queued")


async def test_count_tokens_checks_the_same_conversation_and_its_own_fields(
    fake: FakeAnthropic, http: aiohttp.ClientSession
) -> None:
    body = valid_body()
    del body["stream"]
    async with http.post("/v1/messages/count_tokens", json=body) as refused:
        assert refused.status == 400
        assert (await refused.json())["error"]["message"] == "max_tokens: Extra inputs are not permitted"
    del body["max_tokens"]
    bad = copy.deepcopy(body)
    messages(bad)[1]["content"][0]["signature"] = "forged"
    async with http.post("/v1/messages/count_tokens", json=bad) as refused:
        refusal = (await refused.json())["error"]["message"]
        assert refusal == "messages.1.content.0: Invalid `signature` in `thinking` block"
    async with http.post("/v1/messages/count_tokens", json=body) as accepted:
        assert accepted.status == 200 and (await accepted.json())["input_tokens"] > 0


async def test_the_sdk_raises_the_refusal_as_a_bad_request(
    fake: FakeAnthropic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the gateway's error mapping sees: the SDK's BadRequestError carrying the API's message."""
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path))
    client = anthropic.AsyncAnthropic(api_key="test-key", base_url=fake.base_url, max_retries=0)
    streamed = await client.messages.create(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}])
    block = streamed.content[0]
    assert block.type == "thinking" and block.signature == sign_thinking(block.thinking)
    replay: Any = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{**block.model_dump(), "thinking": block.thinking[:-1]}]},
        {"role": "user", "content": "again"},
    ]
    with pytest.raises(anthropic.BadRequestError) as info:
        await client.messages.create(model=MODEL, max_tokens=100, messages=replay)
    await client.close()
    assert info.value.status_code == 400
    assert info.value.body == {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "messages.1.content.0: Invalid `signature` in `thinking` block",
        },
    }
