"""`GET /metrics` in Prometheus text format, and the one structured log line per turn."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace

import pytest
from aiohttp import ClientWebSocketResponse
from prometheus_client.parser import text_string_to_metric_families

from gateway.chat import turn as turn_module
from gateway.chat.metrics import Metrics
from gateway.server.logs import JsonFormatter
from gateway.server.workers import merge
from gateway.settings import Settings
from tests.conftest import Gateway, chat, collect, recv, send
from tests.fake_anthropic import COMPACTION_REQUEST, FakeAnthropic, Reply
from tests.sql import sql_rows

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(gateway: Gateway, **headers: str) -> Samples:
    resp = await gateway.client.get("/metrics", headers=headers)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_turns_tokens_cost_and_latencies(
    gateway: Gateway, ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    # The cancelled turn is billed its 200 input tokens and the output it generated (estimated, chat/spend.py).
    fake.queue(
        Reply(text="one two three", input_tokens=1000, output_tokens=50),
        Reply(hold_after_deltas=1, input_tokens=200, output_tokens_before_error=1),
    )
    end = (await chat(ws, "hello"))[-1]
    await send(ws, {"type": "chat.send", "id": "held", "content": "long"})
    session_id = (await recv(ws))["sessionId"]
    await fake.wait_held()
    during = await scrape(gateway)
    assert value(during, "agentspace_active_streams") == 1
    assert value(during, "agentspace_connections") == 1
    await send(ws, {"type": "chat.cancel", "id": "c", "sessionId": session_id})
    await collect(ws, until=("chat.cancelled",))
    assert (await chat(ws, "hi", sessionId="nope"))[-1]["code"] == "SESSION_NOT_FOUND"

    after = await scrape(gateway)
    assert value(after, "agentspace_active_streams") == 0
    assert value(after, "agentspace_turns_total", status="complete", code="") == 1
    assert value(after, "agentspace_turns_total", status="cancelled", code="") == 1
    assert value(after, "agentspace_turns_total", status="rejected", code="SESSION_NOT_FOUND") == 1
    model = "claude-sonnet-5-5"
    [cancelled] = await sql_rows(settings.db_url, "SELECT output_tokens, total_cost FROM usage_records WHERE estimated")
    assert value(after, "agentspace_tokens_total", model=model, kind="output") == 50 + cancelled["output_tokens"]
    assert value(after, "agentspace_tokens_total", model=model, kind="input") == 1000 + 200
    # Cost in the metrics is the same money the client was told about, plus the cancelled turn's share.
    assert end["cost"]["totalCost"] == (1000 * 2000 + 50 * 10_000) / 1e9
    cancelled_usd = cancelled["total_cost"] / 1e9
    assert value(after, "agentspace_cost_usd_total", model=model) == pytest.approx(
        end["cost"]["totalCost"] + cancelled_usd
    )
    assert value(after, "agentspace_upstream_latency_seconds_count") == 2
    assert value(after, "agentspace_time_to_first_token_seconds_count") == 2
    assert value(after, "agentspace_gateway_overhead_seconds_count", phase="request") == 2
    # Every relayed chunk: 3 thinking and 3 text deltas, then 3 thinking and 1 text delta before the hold.
    assert value(after, "agentspace_gateway_overhead_seconds_count", phase="delta") == 6 + 4
    assert value(after, "agentspace_db_statement_seconds_count", operation="insert") >= 2
    assert value(after, "agentspace_db_statement_seconds_count", operation="select") >= 2


async def test_a_send_stopped_before_its_user_turn_is_written_is_counted_rejected_as_cancelled(
    gateway: Gateway, ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    """Stopped while its session is compacted first, before anything of the turn is stored: the client gets one
    CANCELLED error naming the session, and /metrics counts a turn rejected with that code."""
    toml = settings.home / "agents" / "small" / "agent.toml"
    toml.parent.mkdir(parents=True)
    toml.write_text("[context]\nkeep_turns = 1\nauto_compact = false\n", encoding="utf-8")
    session_id = (await chat(ws, "First question.", agentId="small"))[-1]["sessionId"]
    for text in ("Second question.", "Third question."):
        assert (await chat(ws, text, sessionId=session_id))[-1]["type"] == "chat.stream.end"
    # From now on any request of this agent's is over 5 % of its window: the next send compacts first.
    toml.write_text("[context]\nkeep_turns = 1\nwindow = 1000\ncompact_at = 0.05\n", encoding="utf-8")
    fake.queue(Reply(hold_after_deltas=1))
    await send(ws, {"type": "chat.send", "id": "t4", "content": "Fourth question.", "sessionId": session_id})
    await fake.wait_held()
    assert fake.requests[-1].body["messages"][-1]["content"][-1]["text"].startswith(COMPACTION_REQUEST)
    await send(ws, {"type": "chat.cancel", "id": "x1", "sessionId": session_id})
    frames = await collect(ws, until=("chat.cancelled",))
    assert frames == [
        {"type": "error", "id": "t4", "requestId": "t4", "code": "CANCELLED", "message": "the request was cancelled",
         "retryable": False, "sessionId": session_id},
        {"type": "chat.cancelled", "id": "x1", "requestId": "x1", "sessionId": session_id},
    ]  # fmt: skip
    samples = await scrape(gateway)
    assert value(samples, "agentspace_turns_total", status="rejected", code="CANCELLED") == 1
    assert value(samples, "agentspace_turns_total", status="complete", code="") == 3


async def test_a_turn_failing_unexpectedly_ends_with_one_internal_error_and_is_counted_rejected(
    gateway: Gateway, ws: ClientWebSocketResponse, fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug inside a turn (here: counting its tokens raises) still gives the client its one terminal frame, which
    names the exception's type and nothing more; /metrics counts it; the next send goes through."""

    async def broken(*_: object) -> None:
        raise RuntimeError("a secret detail")

    monkeypatch.setattr(turn_module, "measure", broken)
    frames = await chat(ws, "hi", id="t1")
    assert frames == [
        {"type": "error", "id": "t1", "requestId": "t1", "code": "INTERNAL_ERROR",
         "message": "internal error: RuntimeError", "retryable": False},
    ]  # fmt: skip
    monkeypatch.undo()
    assert (await chat(ws, "again", id="t2"))[-1]["type"] == "chat.stream.end"
    samples = await scrape(gateway)
    assert value(samples, "agentspace_turns_total", status="rejected", code="INTERNAL_ERROR") == 1
    assert len(fake.requests) == 1


async def test_metrics_need_the_gateway_token_when_one_is_set(
    gateway_factory: Callable[[Settings], Awaitable[Gateway]], settings: Settings
) -> None:
    gateway = await gateway_factory(replace(settings, token="sekrit"))
    assert (await gateway.client.get("/metrics")).status == 401
    assert (await gateway.client.get("/metrics", headers={"Authorization": "Bearer wrong"})).status == 401
    samples = await scrape(gateway, Authorization="Bearer sekrit")
    assert value(samples, "agentspace_connections") == 0


async def test_two_gateways_in_one_process_keep_separate_metrics(
    gateway_factory: Callable[[Settings], Awaitable[Gateway]], settings: Settings
) -> None:
    first = await gateway_factory(settings)
    second = await gateway_factory(settings)
    ws = await first.ws()
    await chat(ws, "only on the first")
    assert value(await scrape(first), "agentspace_turns_total", status="complete", code="") == 1
    assert value(await scrape(second), "agentspace_turns_total", status="complete", code="") == 0
    await ws.close()


@pytest.fixture
def json_log() -> Iterator[Callable[[str], list[dict[str, object]]]]:
    """Everything every logger writes, as the JSON lines `--log-format json` would print."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)

    def lines(level: str) -> list[dict[str, object]]:
        root.setLevel(level)
        handler.flush()
        return [json.loads(line) for line in buffer.getvalue().splitlines()]

    root.setLevel(logging.INFO)
    yield lines
    root.removeHandler(handler)
    root.setLevel(old_level)


async def test_one_json_line_per_turn_without_content_or_secrets(
    gateway_factory: Callable[[Settings], Awaitable[Gateway]],
    settings: Settings,
    fake: FakeAnthropic,
    json_log: Callable[[str], list[dict[str, object]]],
) -> None:
    gateway = await gateway_factory(replace(settings, token="gateway-sekrit"))
    ws = await gateway.ws(headers={"Authorization": "Bearer gateway-sekrit"})
    fake.queue(Reply(text="the private answer", input_tokens=40, output_tokens=7))
    end = (await chat(ws, "my private question", id="q1"))[-1]
    await ws.close()
    lines = json_log("INFO")
    turns = [line for line in lines if line.get("event") == "turn"]
    assert len(turns) == 1
    turn = turns[0]
    assert turn["requestId"] == "q1"
    assert turn["sessionId"] == end["sessionId"] and turn["messageId"] == end["messageId"]
    assert turn["model"] == "claude-sonnet-5-5" and turn["status"] == "complete" and turn["agentId"] == "default"
    assert turn["inputTokens"] == 40 and turn["outputTokens"] == 7
    assert turn["costNanoUsd"] == round(end["cost"]["totalCost"] * 1e9)
    assert isinstance(turn["durationMs"], int)
    assert turn["level"] == "INFO" and turn["logger"] == "gateway.turns"
    everything = json.dumps(lines)
    for secret in ("my private question", "the private answer", "gateway-sekrit", "test-key"):
        assert secret not in everything


async def test_debug_logging_adds_the_content(
    ws: ClientWebSocketResponse, json_log: Callable[[str], list[dict[str, object]]]
) -> None:
    logging.getLogger().setLevel(logging.DEBUG)
    await chat(ws, "show me in debug")
    turns = [line for line in json_log("DEBUG") if line.get("event") == "turn"]
    assert turns[0]["content"] == "show me in debug"


def test_workers_expositions_merge_into_one_with_every_sample_labelled() -> None:
    """`serve --workers N`: one scrape, every family's HELP/TYPE once, each sample naming its worker, and a worker
    that did not answer shown as down rather than failing the scrape."""
    one, two = Metrics(), Metrics()
    one.turns.labels("complete", "").inc(3)
    two.turns.labels("complete", "").inc(4)
    two.tokens.labels('odd"model}{', "input").inc(5)  # label values may hold braces and escaped quotes
    one.watch(lambda: 2, lambda: 1)
    two.watch(lambda: 5, lambda: 0)
    text = merge({1: one.render().decode(), 2: two.render().decode(), 3: None})

    assert text.count("# TYPE agentspace_turns_total counter") == 1
    families = {f.name: f for f in text_string_to_metric_families(text)}  # it parses as one valid exposition
    turns = {(s.labels["worker"], s.value) for s in families["agentspace_turns"].samples if s.name.endswith("_total")}
    assert turns == {("1", 3.0), ("2", 4.0)}
    assert {(s.labels["worker"], s.value) for s in families["agentspace_connections"].samples} == {
        ("1", 2.0),
        ("2", 5.0),
    }
    tokens = [s for s in families["agentspace_tokens"].samples if s.name.endswith("_total")]
    assert [(s.labels["model"], s.labels["worker"], s.value) for s in tokens] == [('odd"model}{', "2", 5.0)]
    up = {s.labels["worker"]: s.value for s in families["agentspace_worker_up"].samples}
    assert up == {"1": 1.0, "2": 1.0, "3": 0.0}
