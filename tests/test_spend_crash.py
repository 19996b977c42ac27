"""kill -9 with streams in flight leaves every upstream request counted (issue 14, "No spend uncounted"): the real
`agentspace serve` process, killed mid-stream cycle after cycle, restarted on the same database; the test counts the
usage rows against the requests the upstream received.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from gateway.context.tokens import TokenCounter
from tests.fake_anthropic import FakeAnthropic, Reply
from tests.test_crash import WAIT_S, Served, _stream_until_held, _until

CYCLES = 3
STREAMS = 2  # per cycle: one of an agent with a budget (its reservation is a row too), one without
TEXT = "one two three four five six"


async def test_kill_9_mid_stream_leaves_every_request_counted(tmp_path: Path, fake: FakeAnthropic) -> None:
    served = Served(tmp_path / "home", fake)
    capped = served.home / "agents" / "capped"
    capped.mkdir(parents=True)
    (capped / "agent.toml").write_text("[budget]\ndaily_usd = 100\n")
    fake.wait_timeout = WAIT_S
    out = TokenCounter().count("one two three ")

    def count(sql: str) -> int:
        db = served.db()
        try:
            return int(db.execute(sql).fetchone()[0])
        finally:
            db.close()

    async with aiohttp.ClientSession() as http:
        try:
            for cycle in range(1, CYCLES + 1):
                await served.start(http)
                # Start-up recovery made the last cycle's provisional rows final, as they were last checkpointed,
                # and let go of their budget reservations.
                assert count("select count(*) from usage_records where status = 'streaming'") == 0
                assert count("select count(*) from budget_reservations") == 0
                sockets = [await http.ws_connect(f"{served.url}/gateway") for _ in range(STREAMS)]
                for i, ws in enumerate(sockets):
                    fake.queue(Reply(text=TEXT, thinking=None, hold_after_deltas=3, input_tokens=700))
                    await _stream_until_held(ws, 3, **({"agentId": "capped"} if i == 0 else {}))
                await fake.wait_held(cycle * STREAMS)
                # Within one checkpoint of the last delta, each request's row counts the output generated so far.
                await _until(
                    lambda: (
                        count(
                            f"select count(*) from usage_records where status = 'streaming' and output_tokens = {out}"
                        )
                        == STREAMS
                    )
                )
                assert count("select count(*) from budget_reservations where usage_id is not null") == 1
                assert served.proc is not None
                served.proc.kill()  # SIGKILL: no shutdown code runs
                await served.proc.wait()
                for ws in sockets:
                    await ws.close()
                # Killed: every request the upstream received has its row.
                assert count("select count(*) from usage_records") == len(fake.requests) == cycle * STREAMS
            await served.start(http)
        finally:
            await served.stop()

    requests = CYCLES * STREAMS
    assert len(fake.requests) == requests
    assert count("select count(*) from usage_records") == requests
    assert count("select count(*) from usage_records where status = 'interrupted' and estimated") == requests
    assert count("select count(distinct upstream_message_id) from usage_records") == requests
    assert count("select sum(output_tokens) from usage_records") == requests * out
    assert count("select sum(total_cost) from usage_records") == requests * (700 * 2000 + out * 10_000)
    # The rollup counted each row once, provisional then final.
    assert count("select sum(request_count) from usage_daily") == requests
    assert count("select sum(total_cost) from usage_daily") == requests * (700 * 2000 + out * 10_000)
    assert count("select sum(estimated_requests) from usage_daily") == requests
    assert count("select count(*) from budget_reservations") == 0
