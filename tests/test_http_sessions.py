"""Sessions out of stateless HTTP traffic: every request lands as messages and usage, a request extending a stored
conversation continues its session (so an app's conversation is one session with its history and exact cost), and
`x-agentspace-session` names the session outright."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from aiohttp import web

from gateway.app import create_app
from gateway.context.tokens import TokenCounter
from gateway.server.handlers import SERVICES
from gateway.settings import Settings
from gateway.store.keys import new_key
from tests.conftest import chat, make_settings, request
from tests.fake_anthropic import FakeAnthropic, Reply
from tests.http_api import MODEL, Api, Factory, assistant, db_rows, make_api, user

SONNET_NANO = {"input": 2000, "output": 10000, "cache_read": 100, "cache_write_5m": 2500}  # nano-USD per token


@pytest.fixture
async def api(gateway_factory: Factory, settings: Settings) -> AsyncIterator[Api]:
    made = await make_api(gateway_factory, settings)
    yield made
    await made.sdk.close()


def marked(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What coding agents do every turn: a cache breakpoint on the last message, moved forward each time."""
    *head, last = messages
    content = last["content"]
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else [dict(b) for b in content]
    blocks[-1]["cache_control"] = {"type": "ephemeral"}
    return [*head, {"role": last["role"], "content": blocks}]


async def test_fifty_turns_are_one_session_with_the_exact_summed_cost(api: Api, fake: FakeAnthropic) -> None:
    expected_nano = 0
    messages: list[dict[str, Any]] = []
    for turn in range(50):
        tokens = {"input_tokens": 100 + turn, "output_tokens": 7 + turn % 5, "cache_read": 50 * turn}
        fake.queue(Reply(text=f"answer {turn}", **tokens))
        expected_nano += (
            tokens["input_tokens"] * SONNET_NANO["input"]
            + tokens["output_tokens"] * SONNET_NANO["output"]
            + tokens["cache_read"] * SONNET_NANO["cache_read"]
        )
        messages.append(user(f"question {turn}"))
        if turn % 2:
            async with api.sdk.messages.stream(model=MODEL, max_tokens=64, messages=marked(messages)) as stream:
                reply = await stream.get_final_message()
        else:
            reply = await api.sdk.messages.create(model=MODEL, max_tokens=64, messages=marked(messages))
        assert reply.content[-1].text == f"answer {turn}"
        messages.append(assistant(reply.content))
    (session_id, count, title), *others = await api.rows("select id, message_count, title from sessions")
    assert others == [] and count == 100 and title == "question 0"
    seqs = await api.rows("select seq, role, text from messages order by seq")
    assert [s[0] for s in seqs] == list(range(100))
    assert seqs[98:] == [(98, "user", "question 49"), (99, "assistant", "answer 49")]
    assert await api.rows(
        "select count(*), sum(total_cost) from usage_records where session_id = :s", s=session_id
    ) == [(50, expected_nano)]
    # ...and the same through the protocol a client reads it with.
    ws = await api.gateway.ws(headers={"Authorization": f"Bearer {api.key}"})
    report = await request(ws, {"type": "usage.query", "id": "u", "sessionId": session_id})
    assert report["grandTotal"]["totalCostNanoUsd"] == expected_nano and report["grandTotal"]["requestCount"] == 50
    listed = await request(ws, {"type": "session.list", "id": "l"})
    assert [(s["sessionId"], s["messageCount"]) for s in listed["sessions"]] == [(session_id, 100)]


async def test_a_rewritten_history_or_another_key_starts_a_new_session(
    api: Api, fake: FakeAnthropic, gateway_factory: Factory
) -> None:
    first = await api.sdk.messages.create(model=MODEL, max_tokens=64, messages=[user("one")])
    await api.sdk.messages.create(
        model=MODEL, max_tokens=64, messages=[user("one"), assistant(first.content), user("two")]
    )
    # An edited earlier turn is another conversation.
    await api.sdk.messages.create(
        model=MODEL, max_tokens=64, messages=[user("ONE"), assistant(first.content), user("two")]
    )
    # The same conversation under another key is someone else's.
    other_key = new_key()
    await api.gateway.app[SERVICES].store.keys.create("other", other_key, daily_cap=None, monthly_cap=None)
    other = api.client(other_key)
    await other.messages.create(
        model=MODEL, max_tokens=64, messages=[user("one"), assistant(first.content), user("two")]
    )
    await other.close()
    assert sorted(await api.rows("select title, message_count from sessions")) == [("ONE", 4), ("one", 4), ("one", 4)]


async def test_a_failed_request_retried_continues_its_session(api: Api, fake: FakeAnthropic) -> None:
    fake.queue(Reply(status=529))
    with pytest.raises(anthropic.OverloadedError):
        await api.sdk.messages.create(model=MODEL, max_tokens=64, messages=[user("hello")])
    again = await api.sdk.messages.create(model=MODEL, max_tokens=64, messages=[user("hello")])
    assert again.content[-1].text == "You said: hello"
    assert await api.rows("select role, status, text from messages order by seq") == [
        ("user", "complete", "hello"),
        ("assistant", "failed", ""),
        ("assistant", "complete", "You said: hello"),
    ]


async def test_the_header_names_the_session(api: Api, fake: FakeAnthropic) -> None:
    named = api.client(api.key, default_headers={"x-agentspace-session": "my-project-42"})
    first = await named.messages.create(model=MODEL, max_tokens=64, messages=[user("start")])
    # The app keeps only the last exchange: it still lands in the named session, after what it holds.
    await named.messages.create(
        model=MODEL, max_tokens=64, messages=[user("start"), assistant(first.content), user("go on")]
    )
    await named.messages.create(model=MODEL, max_tokens=64, messages=[user("fresh question")])
    assert await api.rows("select id, message_count from sessions") == [("my-project-42", 6)]
    assert [r[0] for r in await api.rows("select text from messages where role = 'user' order by seq")] == [
        "start",
        "go on",
        "fresh question",
    ]
    with pytest.raises(anthropic.BadRequestError):
        await api.client(api.key, default_headers={"x-agentspace-session": "../etc"}).messages.create(
            model=MODEL, max_tokens=8, messages=[user("x")]
        )
    await named.close()


async def test_http_and_websocket_share_sessions(api: Api, fake: FakeAnthropic) -> None:
    ws = await api.gateway.ws(headers={"Authorization": f"Bearer {api.key}"})
    session_id = (await chat(ws, "begun over the socket"))[0]["sessionId"]
    history = await request(ws, {"type": "session.history", "id": "h", "sessionId": session_id})
    replay = [{"role": m["role"], "content": m["content"]} for m in history["messages"]]
    named = api.client(api.key, default_headers={"x-agentspace-session": session_id})
    await named.messages.create(model=MODEL, max_tokens=64, messages=[*replay, user("continued over HTTP")])
    history = await request(ws, {"type": "session.history", "id": "h2", "sessionId": session_id})
    assert [m["text"] for m in history["messages"]] == [
        "begun over the socket",
        "You said: begun over the socket",
        "continued over HTTP",
        "You said: continued over HTTP",
    ]
    assert (await chat(ws, "and back", sessionId=session_id))[-1]["type"] == "chat.stream.end"
    await named.close()


async def test_a_client_that_leaves_mid_stream_is_saved_as_disconnected(api: Api, fake: FakeAnthropic) -> None:
    fake.queue(Reply(text="one two three four five six", hold_after_deltas=2))
    manager = api.sdk.messages.stream(model=MODEL, max_tokens=64, messages=[user("talk")])
    stream = await manager.__aenter__()
    seen = [event async for event in _until_text(stream, 2)]
    assert seen == ["one ", "two "]
    await manager.__aexit__(None, None, None)  # the app goes away mid-reply
    assert await fake.wait_stream_closed() is True  # ...and so does the upstream request
    fake.release()
    for _ in range(200):
        rows = await api.rows("select status from messages where role = 'assistant'")
        if rows == [("disconnected",)]:
            break
        await asyncio.sleep(0.02)
    assert rows == [("disconnected",)]
    (usage,) = await api.rows("select status, input_tokens from usage_records")
    assert usage[0] == "disconnected" and usage[1] > 0


async def _until_text(stream: Any, count: int) -> Any:
    seen = 0
    async for event in stream:
        if event.type == "text":
            yield event.text
            seen += 1
            if seen == count:
                return


async def test_an_unknown_agent_is_a_404(api: Api, fake: FakeAnthropic) -> None:
    agentless = api.client(api.key, default_headers={"x-agentspace-agent": "nobody"})
    with pytest.raises(anthropic.NotFoundError):
        await agentless.messages.create(model=MODEL, max_tokens=8, messages=[user("x")])
    await agentless.close()
    assert fake.requests == []


async def test_shutdown_ends_a_stream_with_an_error_event_and_saves_it_interrupted(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    api = await make_api(gateway_factory, settings)
    fake.queue(Reply(text="one two three", hold_after_deltas=1, input_tokens=250, output_tokens_before_error=2))
    streaming = asyncio.Event()

    async def app() -> BaseException | None:
        try:
            async with api.sdk.messages.stream(model=MODEL, max_tokens=64, messages=[user("long")]) as stream:
                async for event in stream:
                    if event.type == "text":
                        streaming.set()
        except anthropic.APIError as exc:
            return exc
        return None

    running = asyncio.create_task(app())
    await streaming.wait()
    await api.gateway.client.server.close()  # what SIGTERM does
    seen = await running
    assert isinstance(seen, anthropic.APIStatusError) and "shutting down" in str(seen.body)
    # The SDK raises at the error event; the gateway saves the partial reply right after writing it.
    for _ in range(250):
        if await api.rows("select 1 from messages where status = 'interrupted'"):
            break
        await asyncio.sleep(0.02)
    (row,) = await api.rows("select status, input_tokens, output_tokens, estimated from usage_records")
    # Anthropic had reported 2 output tokens; it bills what it generated: our count of it, marked estimated.
    assert row == ("interrupted", 250, TokenCounter().count("Thinking it over.one "), True)
    assert await api.rows("select status, text from messages where role = 'assistant'") == [("interrupted", "one ")]
    await api.sdk.close()


async def test_with_finish_on_disconnect_a_reply_is_read_to_its_end(settings: Settings, fake: FakeAnthropic) -> None:
    # As `agentspace serve` runs it (aiohttp's default): a handler is not cancelled when its client leaves; the
    # gateway finds out when a write fails.
    runner = web.AppRunner(create_app(settings.with_overrides(on_disconnect="finish")))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        key = new_key()
        await runner.app[SERVICES].store.keys.create("app", key, daily_cap=None, monthly_cap=None)
        fake.queue(Reply(text=" ".join(f"w{i}" for i in range(2000)), hold_after_deltas=2))
        sdk = anthropic.AsyncAnthropic(base_url=f"http://127.0.0.1:{port}", api_key=key, max_retries=0)
        manager = sdk.messages.stream(model=MODEL, max_tokens=4096, messages=[user("talk")])
        stream = await manager.__aenter__()
        assert [text async for text in _until_text(stream, 2)] == ["w0 ", "w1 "]
        await manager.__aexit__(None, None, None)
        await sdk.close()
        fake.release()
        assert await fake.wait_stream_closed() is False  # read to its end, not cut
        for _ in range(500):
            rows = await db_rows(settings.db_url, "select status, length(text) from messages where role = 'assistant'")
            if rows and rows[0][0] != "streaming":
                break
            await asyncio.sleep(0.02)
        assert rows == [("complete", len(" ".join(f"w{i}" for i in range(2000))))]
    finally:
        await runner.cleanup()


async def test_a_conversation_alternating_between_processes_stays_one_session(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    """`serve --workers N` (or N processes behind a balancer): each request of one SDK conversation may reach
    another process. A process's memory of the tails it wrote is then stale; it is looked up again, not forked."""
    here = await make_api(gateway_factory, settings)
    there = Api(await gateway_factory(settings), here.key, settings)
    messages: list[dict[str, Any]] = []
    for turn in range(6):
        fake.queue(Reply(text=f"answer {turn}"))
        messages.append(user(f"question {turn}"))
        sdk = (here if turn % 2 == 0 else there).sdk
        reply = await sdk.messages.create(model=MODEL, max_tokens=64, messages=messages)
        messages.append(assistant(reply.content))
    assert await here.rows("select message_count from sessions") == [(12,)]
    await here.sdk.close()
    await there.sdk.close()


async def test_a_shutdown_while_the_messages_are_written_ends_the_reply_interrupted(
    gateway_factory: Factory, tmp_path: Path, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shutdown landing while an HTTP request's messages are being written (on SQLite the request waits for the
    writer thread itself): the write runs to its end, the empty reply it made is ended `interrupted`, not left
    `streaming`; the client, stopped before it had an answer, sees the connection close."""
    import threading

    from gateway.server.anthropic_api import IN_FLIGHT, stop_all
    from gateway.store.sqlite_threads import Writer

    # SQLite only: PostgreSQL writes in a task of its own, through a shield (test_cancel_points covers both).
    settings = make_settings(tmp_path / "home", fake, f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}")
    api = await make_api(gateway_factory, settings)
    app = api.gateway.app
    inside, gate = threading.Event(), threading.Event()
    submit = Writer.submit

    def held(writer: Writer, work: Any, *, background: bool) -> Any:
        if not work.__qualname__.startswith("TranscriptStore.begin"):
            return submit(writer, work, background=background)
        monkeypatch.setattr(Writer, "submit", submit)  # this write only: the request's messages

        def gated(connection: Any) -> Any:
            inside.set()
            gate.wait(10)
            return work(connection)

        return submit(writer, gated, background=background)

    monkeypatch.setattr(Writer, "submit", held)
    sending = asyncio.ensure_future(api.sdk.messages.create(model=MODEL, max_tokens=64, messages=[user("hello")]))
    await asyncio.to_thread(inside.wait, 10)
    stopping = asyncio.ensure_future(stop_all(app))
    while not all(task.cancelling() for task in app[IN_FLIGHT]):  # noqa: ASYNC110 - stop_all cancels, then waits
        await asyncio.sleep(0)
    gate.set()
    await stopping
    with pytest.raises(anthropic.APIConnectionError):  # stopped before it had an answer: the connection closes
        await sending
    assert await api.rows("select role, status, text from messages order by seq") == [
        ("user", "complete", "hello"),
        ("assistant", "interrupted", ""),
    ]
    await api.sdk.close()
