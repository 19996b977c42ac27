"""Named gateway keys: made once and stored hashed, listed with their use and spend, revoked; each request's usage row
names its key, reports group by key, a key's caps are enforced, and the WebSocket takes keys beside the old token."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType
from sqlalchemy import text

from gateway.cli import main
from gateway.server.handlers import SERVICES
from gateway.settings import Settings
from gateway.store.db import create_engine
from gateway.store.keys import KEY_PREFIX, key_hash, new_key
from tests.conftest import Gateway, chat, request
from tests.fake_anthropic import FakeAnthropic, Reply

Factory = Callable[[Settings], Awaitable[Gateway]]
TOKEN = "correct-horse-battery-staple-0123456789"


async def rows(db_url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_engine(db_url)
    try:
        async with engine.connect() as conn:
            return [tuple(r) for r in (await conn.execute(text(sql))).all()]
    finally:
        await engine.dispose()


async def make_key(gateway: Gateway, name: str, **caps: int | None) -> str:
    key = new_key()
    store = gateway.app[SERVICES].store
    await store.keys.create(name, key, daily_cap=caps.get("daily_cap"), monthly_cap=caps.get("monthly_cap"))
    return key


async def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(args))
    out, err = capsys.readouterr()
    return code, out, err


async def test_create_list_revoke_from_the_cli(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("AGENTSPACE_HOME", str(settings.home))
    monkeypatch.setenv("AGENTSPACE_DB_URL", settings.db_url)
    code, out, err = await cli(capsys, "token", "create", "--name", "ci-bot", "--daily-usd", "2.5")
    key = out.strip()
    assert code == 0 and key.startswith(KEY_PREFIX) and len(key) >= 40 and key not in err
    # Only the hash is kept.
    stored = await rows(settings.db_url, "select name, prefix, key_hash, daily_cap, monthly_cap from api_keys")
    assert stored == [("ci-bot", key[:12], key_hash(key), 2_500_000_000, None)]
    if settings.is_sqlite:
        database = Path(settings.db_url.split("///", 1)[1])
        assert key.encode() not in await asyncio.to_thread(database.read_bytes)
    assert (await cli(capsys, "token", "create", "--name", "ci-bot"))[0] != 0  # names are unique
    code, out, _ = await cli(capsys, "token", "list")
    assert code == 0 and "ci-bot" in out and key[:12] in out and "never" in out and key not in out
    code, out, _ = await cli(capsys, "token", "list", "--json")
    listed = json.loads(out)
    assert (listed["name"], listed["requests"], listed["dailyCapNanoUsd"]) == ("ci-bot", 0, 2_500_000_000)
    assert (await cli(capsys, "token", "budget", "ci-bot", "--monthly-usd", "40"))[0] == 0
    assert await rows(settings.db_url, "select daily_cap, monthly_cap from api_keys") == [(None, 40_000_000_000)]
    assert (await cli(capsys, "token", "revoke", "ci-bot"))[0] == 0
    assert (await cli(capsys, "token", "revoke", "ci-bot"))[0] == 1
    assert "(revoked)" in (await cli(capsys, "token", "list"))[1]


async def test_websocket_takes_keys_and_the_old_token(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    gateway = await gateway_factory(settings.with_overrides(token=TOKEN, auth_timeout_s=0.3))
    key = await make_key(gateway, "laptop")
    for credential in (key, TOKEN):
        ws = await gateway.ws(headers={"Authorization": f"Bearer {credential}"})
        assert (await chat(ws, "hello"))[-1]["type"] == "chat.stream.end"
        await ws.close()
    # The same key in the `auth` frame (what a browser does).
    ws = await gateway.ws()
    assert (await request(ws, {"type": "auth", "id": "a", "token": key}))["type"] == "auth.ok"
    assert (await chat(ws, "hello again"))[-1]["type"] == "chat.stream.end"
    await ws.close()
    usage = await rows(settings.db_url, "select k.name from usage_records u left join api_keys k on k.id = u.key_id")
    assert sorted(name or "" for (name,) in usage) == ["", "laptop", "laptop"]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gateway.ws(headers={"Authorization": f"Bearer {KEY_PREFIX}not-a-key"})
    assert refused.value.status == 401


async def test_a_key_alone_makes_the_gateway_require_credentials(gateway_factory: Factory, settings: Settings) -> None:
    gateway = await gateway_factory(settings.with_overrides(auth_timeout_s=0.3))
    open_ws = await gateway.ws()  # no token, no key yet: open, as before
    assert (await request(open_ws, {"type": "ping", "id": 1}))["type"] == "pong"
    key = await make_key(gateway, "only")
    ws = await gateway.ws()
    answer = await request(ws, {"type": "ping", "id": 2})
    assert answer["code"] == "UNAUTHORIZED"
    assert (await ws.receive(timeout=5)).type == WSMsgType.CLOSE and ws.close_code == WSCloseCode.POLICY_VIOLATION
    ws = await gateway.ws(headers={"Authorization": f"Bearer {key}"})
    assert (await request(ws, {"type": "ping", "id": 3}))["type"] == "pong"
    await gateway.app[SERVICES].store.keys.revoke("only")
    with pytest.raises(aiohttp.WSServerHandshakeError) as revoked:  # refused, though the gateway is open again...
        await gateway.ws(headers={"Authorization": f"Bearer {key}"})
    assert revoked.value.status == 401
    assert (await request(await gateway.ws(), {"type": "ping", "id": 4}))["type"] == "pong"  # ...to the keyless


async def test_reports_group_by_key_and_a_keys_caps_hold(
    gateway_factory: Factory, settings: Settings, fake: FakeAnthropic
) -> None:
    gateway = await gateway_factory(settings)
    alice = await make_key(gateway, "alice")
    bob = await make_key(gateway, "bob", daily_cap=30_000_000)  # $0.03 a day
    fake.queue(Reply(input_tokens=1000, output_tokens=100), Reply(input_tokens=2000, output_tokens=100))
    for key, words in ((alice, "one"), (bob, "two")):
        ws = await gateway.ws(headers={"Authorization": f"Bearer {key}"})
        assert (await chat(ws, words, maxTokens=100))[-1]["type"] == "chat.stream.end"
        await ws.close()
    ws = await gateway.ws(headers={"Authorization": f"Bearer {alice}"})
    report = await request(ws, {"type": "usage.query", "id": "u", "groupBy": "key"})
    groups = {g["key"]: g for g in report["groups"]}
    assert set(groups) == {"alice", "bob"}
    assert groups["alice"]["inputTokens"] == 1000 and groups["bob"]["inputTokens"] == 2000
    only_bob = await request(ws, {"type": "usage.query", "id": "v", "keyName": "bob"})
    assert only_bob["grandTotal"]["requestCount"] == 1
    (cap,) = [b for b in report["budgets"] if b.get("keyName") == "bob"]
    assert cap["period"] == "day" and cap["spentNanoUsd"] == groups["bob"]["totalCostNanoUsd"]
    # bob spent $0.0075 of $0.03; a worst case of 10,000 output tokens ($0.15) would pass the cap.
    bob_ws = await gateway.ws(headers={"Authorization": f"Bearer {bob}"})
    refused = (await chat(bob_ws, "a long one", maxTokens=10_000))[-1]
    assert (refused["code"], refused["keyName"], refused["period"]) == ("BUDGET_EXCEEDED", "bob", "day")
    assert "key bob's daily budget" in refused["message"]
    assert len(fake.requests) == 2
    unknown = await request(ws, {"type": "usage.query", "id": "w", "keyName": "carol"})
    assert (unknown["code"], unknown["field"]) == ("INVALID_MESSAGE", "keyName")


async def test_an_automatic_compaction_is_billed_to_the_key_whose_send_ran_it(
    gateway_factory: Factory, settings: Settings
) -> None:
    """The summary request a send runs first is that send's spend: its usage row names the send's key, and its
    `session.compacted` frame carries the send's id."""
    gateway = await gateway_factory(settings)
    alice = await make_key(gateway, "alice")
    ws = await gateway.ws(headers={"Authorization": f"Bearer {alice}"})
    toml = settings.agents_dir / "small" / "agent.toml"
    toml.parent.mkdir(parents=True)
    toml.write_text("[context]\nkeep_turns = 1\nauto_compact = false\n", encoding="utf-8")
    session_id = (await chat(ws, "First question.", agentId="small"))[0]["sessionId"]
    for words in ("Second question.", "Third question."):
        await chat(ws, words, sessionId=session_id)
    # Any request of this agent's is now over 5 % of its window: the next send compacts first.
    toml.write_text("[context]\nkeep_turns = 1\nwindow = 1000\ncompact_at = 0.05\n", encoding="utf-8")
    frames = await chat(ws, "Fourth question.", sessionId=session_id, id="t4")
    assert frames[-1]["type"] == "chat.stream.end"
    passes = [f["id"] for f in frames if f["type"] == "session.compacted"]
    assert passes and set(passes) == {"t4"}
    billed = await rows(
        settings.db_url,
        "select u.purpose, k.name from usage_records u left join api_keys k on k.id = u.key_id order by u.created_at",
    )
    assert billed == [("chat", "alice")] * 3 + [("compaction", "alice")] * len(passes) + [("chat", "alice")]
    await ws.close()
