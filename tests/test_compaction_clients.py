"""Compaction from the clients: `/compact` in `agentspace chat`, and the Python client's `compact()`, `inspect(compact=
True)` and the compactions a reply's stream saw."""

from __future__ import annotations

from gateway.client import ConflictError, GatewayClient
from gateway.settings import Settings
from tests.conftest import Gateway
from tests.fake_anthropic import FakeAnthropic
from tests.test_chat_cli import run_cli, url_of
from tests.test_compaction import long_message, make_agent


async def test_slash_compact_in_the_terminal_chat(gateway: Gateway, fake: FakeAnthropic) -> None:
    lines = "First question.\nSecond question.\nThird question.\n/compact keep the numbers\n/quit\n"
    code, out, err = await run_cli("chat", "--url", url_of(gateway), stdin=lines.encode())
    assert code == 0, err
    assert "(compacted 2 messages into a summary, 4 kept: next request" in out
    summarised = fake.requests[-1].body["messages"][-1]["content"][-1]["text"]
    assert summarised.endswith("Also: keep the numbers")


async def test_client_compacts_and_sees_automatic_compactions(
    gateway: Gateway, fake: FakeAnthropic, settings: Settings
) -> None:
    agent = make_agent(settings.home)
    async with GatewayClient.connect(url_of(gateway)) as gw:
        stream = gw.chat(long_message(0), agent_id=agent)
        await stream.text()
        session_id = stream.session_id
        assert session_id is not None
        seen = []
        for n in range(1, 12):
            stream = gw.chat(long_message(n), session_id=session_id)
            await stream.text()
            seen += stream.compactions
        assert seen and all(f["trigger"] == "auto" and f["sessionId"] == session_id for f in seen)

        preview = await gw.inspect(session_id, compact=True)
        assert preview["compaction"]["possible"] is True
        done = await gw.compact(session_id, keep_turns=0)
        assert done["type"] == "session.compacted" and done["keptMessages"] == 0
        try:
            await gw.compact(session_id, keep_turns=0)
        except ConflictError as exc:
            assert exc.code == "NOTHING_TO_COMPACT"
        else:
            raise AssertionError("a second compaction had something to compact")
