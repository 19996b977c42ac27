"""Attacks on the edge, measured as an outsider would run them against `agentspace serve` (issue 14).

    python -m bench.edge preauth [--sockets 300]     # RSS of the gateway while N unauthenticated sockets each
                                                     # send most of a frame that claims 5 MB
    python -m bench.edge flood [--flooders 2] [--token] [--seconds 8]
                                                     # another client's ping and turn latency while N clients
                                                     # send maximal frames (4 MiB of small keys) back to back
    python -m bench.edge inspect                     # context.inspect of a 1 MB draft with no spaces, and a ping
                                                     # sent meanwhile

Each run starts its own fake upstream and gateway on free ports with a temporary AGENTSPACE_HOME, prints one JSON
object, and stops both. Numbers are for docs/SECURITY.md and docs/BENCHMARKS.md; nothing here is a pass/fail test.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from .procs import (
    Proc,
    UpstreamConfig,
    agentspace_argv,
    fake_url,
    free_port,
    gateway_env,
    raise_fd_limit,
    rss_kb,
    spawn,
    start_fake,
    stopped_on_failure,
    wait_http,
)
from .stats import summary

TOKEN = "edge-bench-token-" + "x" * 32
MAX_FRAME = 4 * 1024 * 1024


@contextlib.asynccontextmanager
async def running(token: bool, words: int = 20, extra_env: dict[str, str] | None = None) -> AsyncIterator[Proc]:
    with tempfile.TemporaryDirectory(prefix="edge-") as tmp:
        home = Path(tmp) / "home"
        fake = await start_fake(UpstreamConfig(words=words, delay_ms=1), fake_url(), Path(tmp))
        try:
            env = gateway_env(home, fake.url, None)
            # The production limits, not the bench's usual trusted-load ones.
            for trusted in ("FRAMES_PER_SECOND", "FRAME_BURST", "MAX_CONNECTIONS", "MAX_CONNECTIONS_PER_ADDRESS"):
                env.pop(f"AGENTSPACE_{trusted}")
            if token:
                env["AGENTSPACE_TOKEN"] = TOKEN
            env.update(extra_env or {})
            port = free_port()
            argv = [*agentspace_argv(), "serve", "--host", "127.0.0.1", "--port", str(port)]
            gateway = await spawn("gateway", argv, Path(tmp), env)
            async with stopped_on_failure(gateway):
                await wait_http(gateway, f"http://127.0.0.1:{port}/healthz")
            gateway.url = f"127.0.0.1:{port}"
            try:
                yield gateway
            finally:
                await gateway.stop()
        finally:
            await fake.stop()


async def raw_upgrade(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket upgrade by hand, so the attack costs the attacker nothing but bytes."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /gateway HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    return reader, writer


def frame_header(length: int) -> bytes:
    """A masked text frame's header claiming `length` bytes; the mask is zero, so the payload goes as is."""
    return bytes([0x81, 0x80 | 127]) + struct.pack("!Q", length) + b"\0\0\0\0"


async def preauth(args: argparse.Namespace) -> dict[str, Any]:
    claimed, sent = args.claim, args.bytes
    chunk = b" " * min(sent, 256 * 1024)
    async with running(token=True) as gateway:
        await asyncio.sleep(0.5)
        before = rss_kb(gateway.pid)
        outcomes: dict[str, int] = {}
        writers: list[asyncio.StreamWriter] = []
        peak = before

        async def attacker() -> None:
            try:
                _reader, writer = await raw_upgrade(gateway.url)
            except (OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError) as exc:
                outcomes[f"refused: {exc}"[:60]] = outcomes.get(f"refused: {exc}"[:60], 0) + 1
                return
            writers.append(writer)
            try:
                writer.write(frame_header(claimed))
                for _ in range(sent // len(chunk)):
                    writer.write(chunk)
                    await asyncio.wait_for(writer.drain(), 5)
                outcomes["sent all"] = outcomes.get("sent all", 0) + 1
                # Then hold the socket, as an attacker would, until the gateway lets go of it.
                closed_after = await _held(_reader)
                outcomes[f"closed by the gateway after {closed_after:.0f} s"] = (
                    outcomes.get(f"closed by the gateway after {closed_after:.0f} s", 0) + 1
                )
            except (OSError, TimeoutError):
                outcomes["cut off"] = outcomes.get("cut off", 0) + 1

        started = time.monotonic()
        tasks = [asyncio.create_task(attacker()) for _ in range(args.sockets)]
        while not all(t.done() for t in tasks) and time.monotonic() - started < 60:
            peak = max(peak, rss_kb(gateway.pid))
            await asyncio.sleep(0.05)
        await asyncio.gather(*tasks, return_exceptions=True)
        for writer in writers:
            writer.close()
        await asyncio.sleep(2.0)
        after = rss_kb(gateway.pid)
        peak = max(peak, after)
        return {
            "scenario": "preauth",
            "sockets": args.sockets,
            "claimedBytes": claimed,
            "sentBytesEach": sent,
            "outcomes": outcomes,
            "rssMiB": {"before": before // 1024, "peak": peak // 1024, "afterClose": after // 1024},
            "seconds": round(time.monotonic() - started, 1),
        }


async def _held(reader: asyncio.StreamReader) -> float:
    started = time.monotonic()
    with contextlib.suppress(OSError, TimeoutError):
        while await asyncio.wait_for(reader.read(65536), 30):
            pass
    return time.monotonic() - started


def maximal_frame() -> str:
    """The costliest frame to parse that still fits: 4 MiB of tiny keys (a dict of ~400,000 entries)."""
    parts, size, n = ['{"type":"ping"'], 14, 0
    while size < MAX_FRAME - 32:
        piece = f',"k{n}":0'
        parts.append(piece)
        size += len(piece)
        n += 1
    return "".join(parts) + "}"


async def flooder(url: str, frame: str, stop: asyncio.Event, sent: list[int]) -> None:
    """Maximal frames as fast as the gateway takes them; without the token when the gateway has one (then each
    socket is closed after its first frame, and the flooder reconnects)."""
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            try:
                async with http.ws_connect(url, max_msg_size=0) as ws:
                    reader = asyncio.create_task(_drain(ws))
                    try:
                        while not stop.is_set() and not ws.closed:
                            await ws.send_str(frame)
                            sent[0] += 1
                    finally:
                        reader.cancel()
            except (aiohttp.ClientError, ConnectionError, RuntimeError):
                await asyncio.sleep(0.01)


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _msg in ws:
        pass


async def victim(url: str, token: bool, stop: asyncio.Event) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {TOKEN}"} if token else {}
    pings: list[float] = []
    turns: list[float] = []
    errors: dict[str, int] = {}
    async with aiohttp.ClientSession() as http, http.ws_connect(url, headers=headers) as ws:
        n = 0
        while not stop.is_set():
            n += 1
            started = time.monotonic()
            await ws.send_json({"type": "ping", "id": n})
            answer = json.loads((await ws.receive(timeout=30)).data)
            if answer.get("type") == "pong":
                pings.append((time.monotonic() - started) * 1000)
            else:
                errors[answer.get("code", "?")] = errors.get(answer.get("code", "?"), 0) + 1
            started = time.monotonic()
            await ws.send_json({"type": "chat.send", "id": f"t{n}", "content": "hello"})
            while True:
                frame = json.loads((await ws.receive(timeout=30)).data)
                if frame["type"] in ("chat.stream.end", "error"):
                    break
            if frame["type"] == "chat.stream.end":
                turns.append((time.monotonic() - started) * 1000)
            else:
                errors[frame.get("code", "?")] = errors.get(frame.get("code", "?"), 0) + 1
            await asyncio.sleep(0.05)
    return {"pingMs": summary(pings), "turnMs": summary(turns), "errors": errors}


async def flood(args: argparse.Namespace) -> dict[str, Any]:
    async with running(token=args.token) as gateway:
        url = f"ws://{gateway.url}/gateway"
        quiet_stop = asyncio.Event()
        quiet_task = asyncio.create_task(victim(url, args.token, quiet_stop))
        await asyncio.sleep(args.seconds / 2)
        quiet_stop.set()
        quiet = await quiet_task
        # The flooders run in a process of their own: masking 4 MiB frames would otherwise stall this process's
        # loop, and the victim's latency would measure the bench, not the gateway.
        argv = [sys.executable, "-m", "bench.edge", "flooders", url, str(args.flooders), str(args.seconds + 1.5)]
        with tempfile.TemporaryDirectory() as tmp:
            flooders = await spawn("flooders", argv, Path(tmp), stdout=asyncio.subprocess.PIPE)
            try:
                await asyncio.sleep(1.0)
                victim_stop = asyncio.Event()
                victim_task = asyncio.create_task(victim(url, args.token, victim_stop))
                await asyncio.sleep(args.seconds)
                victim_stop.set()
                loaded = await victim_task
                assert flooders.proc.stdout is not None
                sent = json.loads(await asyncio.wait_for(flooders.proc.stdout.read(), 30) or b"{}")
            finally:
                await flooders.stop()
        return {
            "scenario": "flood",
            "flooders": args.flooders,
            "gatewayToken": args.token,
            "frameBytes": len(maximal_frame()),
            "floodFramesPerSecond": sent.get("framesPerSecond"),
            "quiet": quiet,
            "underFlood": loaded,
        }


async def flooders(args: argparse.Namespace) -> dict[str, Any]:
    frame = maximal_frame()
    stop, sent = asyncio.Event(), [0]
    tasks = [asyncio.create_task(flooder(args.url, frame, stop, sent)) for _ in range(args.count)]
    started = time.monotonic()
    await asyncio.sleep(args.seconds)
    stop.set()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"framesPerSecond": round(sent[0] / (time.monotonic() - started), 2)}


async def inspect(args: argparse.Namespace) -> dict[str, Any]:
    async with running(token=False) as gateway, aiohttp.ClientSession() as http:
        url = f"ws://{gateway.url}/gateway"
        async with http.ws_connect(url) as ws, http.ws_connect(url) as other:
            await ws.send_json({"type": "chat.send", "id": "s", "content": "hello"})
            while (frame := json.loads((await ws.receive()).data))["type"] != "chat.stream.end":
                pass
            session_id = frame["sessionId"]
            draft = "a" * 1_000_000
            started = time.monotonic()
            await ws.send_json({"type": "context.inspect", "id": "i", "sessionId": session_id, "content": draft})
            await asyncio.sleep(0.02)
            ping_started = time.monotonic()
            await other.send_json({"type": "ping", "id": 1})
            await other.receive(timeout=30)
            ping_ms = (time.monotonic() - ping_started) * 1000
            answer = json.loads((await ws.receive(timeout=60)).data)
            return {
                "scenario": "inspect",
                "draftChars": len(draft),
                "inspectMs": round((time.monotonic() - started) * 1000, 1),
                "answer": answer["type"] if answer["type"] != "error" else answer["code"],
                "pingDuringMs": round(ping_ms, 1),
            }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.edge")
    sub = parser.add_subparsers(dest="scenario", required=True)
    p = sub.add_parser("preauth")
    p.add_argument("--sockets", type=int, default=300)
    p.add_argument("--bytes", type=int, default=4_718_592, help="payload bytes each socket sends (then holds it)")
    p.add_argument(
        "--claim",
        type=int,
        default=5_000_000,
        help="the frame length each socket declares (5 MB: just under the old read limit of 4 MiB + 1 MiB)",
    )
    f = sub.add_parser("flood")
    f.add_argument("--flooders", type=int, default=2)
    f.add_argument("--token", action="store_true", help="the gateway has a token; the flooders do not")
    f.add_argument("--seconds", type=float, default=8.0)
    sub.add_parser("inspect")
    fl = sub.add_parser("flooders", help="(used by flood) send maximal frames from N connections for S seconds")
    fl.add_argument("url")
    fl.add_argument("count", type=int)
    fl.add_argument("seconds", type=float)
    args = parser.parse_args()
    raise_fd_limit()
    scenarios = {"preauth": preauth, "flood": flood, "inspect": inspect, "flooders": flooders}
    result = asyncio.run(scenarios[args.scenario](args))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
