"""Concurrent streamed chats through `gateway.client`, and what the gateway's own /metrics say about its overhead.

    python bench/chat_bench.py                          # 50 clients x 4 chats, 100 words per reply, 5 ms apart
    python bench/chat_bench.py --clients 200 --chats 2 --words 50 --delay-ms 10

Starts the fake Anthropic server and `agentspace serve` as their own processes on loopback (a temporary
AGENTSPACE_HOME), drives them from this process with GatewayClient, then reads the gateway's histograms:
time to first token as the client sees it, and the gateway overhead (`chat.send` parsed -> upstream request sent;
upstream delta received -> frame written) as the gateway measures it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gateway.client import GatewayClient

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def wait_healthy(port: int) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the gateway did not come up")


async def one_client(url: str, chats: int, ttft_ms: list[float], total_ms: list[float]) -> None:
    async with GatewayClient.connect(url) as gw:
        session_id = None
        for i in range(chats):
            started = time.perf_counter()
            reply = gw.chat(f"question {i}", session_id=session_id)
            first = True
            async for delta in reply:
                if first and not delta.is_thinking:
                    ttft_ms.append((time.perf_counter() - started) * 1000)
                    first = False
            total_ms.append((time.perf_counter() - started) * 1000)
            assert reply.end is not None and reply.end.status == "complete", reply.end
            session_id = reply.session_id


def histogram_quantiles(text: str, name: str, labels: dict[str, str]) -> tuple[float, float, float, int]:
    """Mean, and P50/P95 upper bucket bounds, of one histogram series in the exposition text."""
    buckets: list[tuple[float, float]] = []
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if any(s.labels.get(k) != v for k, v in labels.items()):
                continue
            if s.name == f"{name}_bucket":
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name == f"{name}_sum":
                total = s.value
            elif s.name == f"{name}_count":
                count = s.value
    buckets.sort()
    if not count:
        return 0.0, 0.0, 0.0, 0

    def bound(q: float) -> float:
        return next(le for le, c in buckets if c >= q * count)

    return (total / count if count else 0.0), bound(0.5), bound(0.95), int(count)


async def main(args: argparse.Namespace) -> None:
    fake_port, port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as home:
        env = {
            **os.environ,
            "AGENTSPACE_HOME": home,
            "AGENTSPACE_PORT": str(port),
            "ANTHROPIC_API_KEY": "test",
            "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{fake_port}",
            "AGENTSPACE_FRAMES_PER_SECOND": "0",
            "AGENTSPACE_LOG_LEVEL": "WARNING",
        }
        fake = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.fake_anthropic",
            "--port",
            str(fake_port),
            "--words",
            str(args.words),
            "--delay-ms",
            str(args.delay_ms),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        assert fake.stdout is not None
        await fake.stdout.readline()  # it prints its URL once it is listening
        server = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "serve", env=env, cwd=ROOT)
        try:
            await wait_healthy(port)
            url = f"ws://127.0.0.1:{port}/gateway"
            ttft: list[float] = []
            total: list[float] = []
            started = time.perf_counter()
            await asyncio.gather(*(one_client(url, args.chats, ttft, total) for _ in range(args.clients)))
            wall = time.perf_counter() - started
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                metrics = await resp.text()
        finally:
            for process in (server, fake):
                process.terminate()
                await process.wait()
    turns = args.clients * args.chats
    print(
        f"{turns} chats ({args.clients} concurrent clients, {args.words} words each, {args.delay_ms} ms apart) "
        f"in {wall:.1f} s: {turns / wall:.1f} chats/s"
    )
    ordered = sorted(ttft)
    print(
        f"client time to first text delta: P50 {statistics.median(ordered):.1f} ms, "
        f"P95 {ordered[int(len(ordered) * 0.95) - 1]:.1f} ms; whole reply P50 {statistics.median(total):.0f} ms"
    )
    for phase in ("request", "delta"):
        mean, p50, p95, count = histogram_quantiles(metrics, "agentspace_gateway_overhead_seconds", {"phase": phase})
        print(
            f"gateway overhead, {phase}: mean {mean * 1000:.3f} ms, P50 <= {p50 * 1000:g} ms, "
            f"P95 <= {p95 * 1000:g} ms over {count} observations"
        )
    for verb in ("select", "insert", "update"):
        mean, p50, p95, count = histogram_quantiles(metrics, "agentspace_db_statement_seconds", {"operation": verb})
        if count:
            print(f"database {verb}: mean {mean * 1000:.3f} ms, P95 <= {p95 * 1000:g} ms over {count} statements")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--chats", type=int, default=4)
    parser.add_argument("--words", type=int, default=100)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    asyncio.run(main(parser.parse_args()))
