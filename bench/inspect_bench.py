"""How long `context.inspect` takes on a long session: P50/P95 over the WebSocket and inside the gateway.

    python bench/inspect_bench.py                 # 1,000 messages, 40 inspects
    python bench/inspect_bench.py --messages 2000 --runs 100

Builds the session through the store (the way turns write it), starts the real app on loopback and times
`context.inspect` frames end to end (request sent -> `context.inspection` parsed), plus the query function alone.
Target (issue 3): P50 <= 30 ms for 1,000 messages once the session's token counts are cached.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from gateway.app import create_app
from gateway.chat.services import Services
from gateway.protocol import Request
from gateway.server.handlers import SERVICES
from gateway.server.queries import context_inspect
from gateway.settings import Settings, default_db_url
from gateway.store.chats import new_id

WORDS = (
    "the gateway keeps every session message and usage record in sql so history survives restarts "
    "context window tokens cost cache prompt model reply stream thinking signature agent memory skill"
).split()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


async def populate(s: Services, pairs: int, rng: random.Random) -> str:
    session_id = new_id()
    for pair in range(pairs):
        rows = await s.store.chats.begin_turn(
            session_id=session_id,
            create=pair == 0,
            agent_id="default",
            model=s.settings.default_model,
            content=words(rng, rng.randint(20, 120)),
            idempotency_key=None,
        )
        text = words(rng, rng.randint(50, 300))
        content = [
            {"type": "thinking", "thinking": words(rng, rng.randint(20, 80)), "signature": "c2lnbmF0dXJl" * 4},
            {"type": "text", "text": text},
        ]
        await s.store.chats.finish_turn(
            message_id=rows.assistant_message.id,
            session_id=session_id,
            content=content,
            text=text,
            status="complete",
            stop_reason="end_turn",
            error_code=None,
            usage=None,
        )
    return session_id


def summary(label: str, samples_ms: list[float]) -> str:
    ordered = sorted(samples_ms)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"{label}: P50 {statistics.median(ordered):.1f} ms, P95 {p95:.1f} ms, max {ordered[-1]:.1f} ms"


async def main(messages: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        settings = Settings(home=home, db_url=default_db_url(home), anthropic_api_key=None, heartbeat_s=0)
        app = create_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        s = app[SERVICES]
        started = time.perf_counter()
        session_id = await populate(s, messages // 2, random.Random(7))
        print(f"built {messages} messages in {time.perf_counter() - started:.1f} s")
        frame = {"type": "context.inspect", "sessionId": session_id, "content": "and one more question"}
        url = f"http://127.0.0.1:{port}/gateway"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws, http.ws_connect(url) as other:
            # The first inspect counts 1 MB of history cold; another connection's pings show whether the loop stalls.
            t0 = time.perf_counter()
            await ws.send_str(json.dumps({**frame, "id": "cold"}))
            cold = asyncio.ensure_future(ws.receive())
            pongs: list[float] = []
            while not cold.done():
                p0 = time.perf_counter()
                await other.send_str('{"type":"ping"}')
                await other.receive()
                pongs.append((time.perf_counter() - p0) * 1000)
            await cold
            print(f"first inspect (cold token cache): {(time.perf_counter() - t0) * 1000:.1f} ms")
            print(f"  meanwhile {len(pongs)} pings on another connection, slowest pong {max(pongs):.1f} ms")
            wire: list[float] = []
            parse: list[float] = []
            answer: dict[str, object] = {}
            for i in range(runs):
                t0 = time.perf_counter()
                await ws.send_str(json.dumps({**frame, "id": i}))
                data = (await ws.receive()).data
                t1 = time.perf_counter()
                answer = json.loads(data)
                wire.append((t1 - t0) * 1000)
                parse.append((time.perf_counter() - t1) * 1000)
            assert answer["type"] == "context.inspection", answer
            print(summary(f"context.inspect over the WebSocket, frame received, {runs} runs", wire))
            print(summary("  then the client's json.loads of it", parse))
        inner: list[float] = []
        cpu: list[float] = []
        for _ in range(runs):
            t0, c0 = time.perf_counter(), time.process_time()
            await context_inspect(s, Request("context.inspect", None, frame))
            inner.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        print(summary("queries.context_inspect alone", inner))
        # CPU time (this process, all threads) is what a busy machine cannot inflate; wall time can be.
        print(summary("  its CPU time", cpu))
        totals = answer["totals"]
        assert isinstance(totals, dict)
        print(f"history: {totals['byteCount']:,} bytes, about {totals['tokenEstimate']:,} tokens")
        await runner.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.runs))
