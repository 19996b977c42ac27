"""Prompt-cache reads and writes of a long session, request by request, with automatic compaction on and off.

    python -m bench.compaction_cache                   # 40 turns of ~320 tokens, window 6,000
    python -m bench.compaction_cache --turns 80 --window 20000

Runs the real app on loopback against the fake upstream with its prompt-cache simulation (tests/fake_cache.py:
breakpoints, prefixes, the 20-block lookback), sends the turns through the Python client and prints every usage row
(`purpose`, input, cache read, cache write) from SQL, then the totals of both runs. The figures in
docs/COMPACTION.md come from it.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
from pathlib import Path

from aiohttp import web

from gateway.app import create_app
from gateway.client import GatewayClient
from gateway.settings import Settings, default_db_url
from tests.fake_anthropic import FakeAnthropic
from tests.fake_cache import PromptCache

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa ".split()


def message(n: int) -> str:
    return f"Turn {n}: " + " ".join(WORDS[(n + i) % len(WORDS)] for i in range(110))


Row = tuple[str, int, int, int, int]


async def run(turns: int, window: int | None, auto: bool) -> list[Row]:
    fake = FakeAnthropic()
    fake.prompt_cache = PromptCache()
    await fake.start()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        agent = home / "agents" / "long"
        agent.mkdir(parents=True)
        limit = f"window = {window}\n" if window else ""
        (agent / "agent.toml").write_text(f"[context]\n{limit}keep_turns = 1\nauto_compact = {str(auto).lower()}\n")
        settings = Settings(
            home=home,
            db_url=default_db_url(home),
            anthropic_api_key="bench",
            anthropic_base_url=fake.base_url,
            heartbeat_s=0,
            runtime_file=home / "runtime.json",
        )
        runner = web.AppRunner(create_app(settings))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            async with GatewayClient.connect(f"ws://127.0.0.1:{port}/gateway") as gw:
                session_id = None
                for n in range(turns):
                    stream = gw.chat(message(n), session_id=session_id, agent_id="long")
                    try:
                        await stream.text()
                    except Exception as exc:  # without compaction the session ends at the window
                        print(f"turn {n}: {exc}")
                        break
                    session_id = stream.session_id
        finally:
            await runner.cleanup()
            await fake.close()
        db = sqlite3.connect(home / "gateway.db")
        rows = db.execute(
            "SELECT purpose, input_tokens, cache_read_tokens, cache_write_5m_tokens, total_cost FROM usage_records"
            " ORDER BY created_at"
        ).fetchall()
        db.close()
    return rows


def show(title: str, rows: list[Row], verbose: bool) -> None:
    print(f"\n{title}\n  #  purpose     input  cache read  cache write        USD")
    for i, (purpose, fresh, read, write, nano) in enumerate(rows, start=1):
        if verbose:
            print(f"{i:3}  {purpose:<10} {fresh:6,} {read:11,} {write:12,} {nano / 1e9:10.6f}")
    fresh, read, write, nano = (sum(r[k] for r in rows) for k in (1, 2, 3, 4))
    print(f"     total      {fresh:6,} {read:11,} {write:12,} {nano / 1e9:10.6f}   ({len(rows)} requests)")


async def main(turns: int, window: int) -> None:
    show(f"auto_compact = true, window {window:,}", await run(turns, window, True), True)
    show("auto_compact = false, the model's window", await run(turns, None, False), False)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--window", type=int, default=6000)
    args = parser.parse_args()
    asyncio.run(main(args.turns, args.window))
