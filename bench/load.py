"""The load generator: its own process, told what to run one JSON line at a time on stdin, answering one JSON line
on stdout per command. Kept alive for a whole benchmark so its imports are paid once.

    {"op": "stream", "target": "gateway", "url": "ws://...", "clients": 50, "warmup_s": 1, "duration_s": 10, ...}
    {"op": "idle", "url": "ws://...", "pid": 1234, "connections": 1000, "streaming": 500, ...}
    {"op": "query", "url": "ws://...", "requests": [{"name": ..., "frame": {...}}], "runs": 40, "warmup": 3}
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import traceback
from collections import Counter
from typing import Any

import anthropic
import httpx2

from gateway.client import GatewayClient

from .clients import TurnFailed, direct_client, direct_turn, ws_request, ws_turn
from .history import op_history
from .procs import raise_fd_limit, rss_kb
from .stats import Recorder, summary

CONNECT_CONCURRENCY = 64  # below the server's listen backlog, so a burst of connects never overflows it
GRACE_S = 60.0  # how long turns still running at the end of a window may take to finish
CONNECT_TIMEOUT_S = 120.0  # for all the sockets of one run
REQUEST_TIMEOUT_S = 120.0


def content_for(client: int, turn: int) -> str:
    return f"Benchmark client {client}, turn {turn}: answer briefly."


async def open_clients(url: str, n: int) -> list[GatewayClient]:
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def one() -> GatewayClient:
        async with gate:
            return await GatewayClient.open(url, request_timeout=REQUEST_TIMEOUT_S, connect_timeout=30.0)

    async with asyncio.timeout(CONNECT_TIMEOUT_S):
        results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
    clients = [r for r in results if isinstance(r, GatewayClient)]
    failed = [r for r in results if not isinstance(r, GatewayClient)]
    if failed:
        await close_clients(clients)
        raise RuntimeError(f"{len(failed)} of {n} connections failed: {failed[0]!r}")
    return clients


async def close_clients(clients: list[GatewayClient]) -> None:
    await asyncio.gather(*(gw.close() for gw in clients), return_exceptions=True)


def _failed(rec: Recorder, exc: BaseException) -> None:
    if isinstance(exc, TurnFailed):
        rec.error(exc.code)
    elif isinstance(exc, anthropic.APIStatusError):
        rec.error(f"HTTP {exc.status_code}")
    elif isinstance(exc, TimeoutError | asyncio.TimeoutError):
        rec.error("TIMEOUT")
    else:
        rec.error(type(exc).__name__)


async def _run_clients(cmd: dict[str, Any], rec: Recorder, loops: list[Any]) -> None:
    """Run every client loop; after the window, turns in flight get GRACE_S to finish, then count as unfinished."""
    tasks = [asyncio.create_task(loop) for loop in loops]
    done, pending = await asyncio.wait(
        tasks, timeout=rec.end - time.perf_counter() + float(cmd.get("grace_s", GRACE_S))
    )
    for task in pending:
        task.cancel()
        rec.unfinished += 1
        rec.stalled += 1
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        if task.exception() is not None:
            _failed(rec, task.exception())  # type: ignore[arg-type]


async def op_stream(cmd: dict[str, Any]) -> dict[str, Any]:
    """`clients` loops, each sending turns back to back until the window closes."""
    clients = int(cmd["clients"])
    per_session = int(cmd.get("turns_per_session", 10))
    turn_timeout = float(cmd.get("turn_timeout_s", 120))
    target = cmd["target"]

    def recorder() -> Recorder:
        start = time.perf_counter() + float(cmd["warmup_s"])
        return Recorder(start=start, end=start + float(cmd["duration_s"]), stall_s=float(cmd.get("stall_s", 2.0)))

    if target in ("direct", "http"):  # the SDK as the client: to the upstream, or to the gateway's HTTP API
        client = direct_client(cmd["url"])
        rec = recorder()

        async def direct_loop(i: int) -> None:
            turn = 0
            history: list[dict[str, Any]] = []
            while time.perf_counter() < rec.end:
                if turn % per_session == 0:
                    history = []  # a new conversation, as the WebSocket clients start a new session
                try:
                    await asyncio.wait_for(direct_turn(client, content_for(i, turn), rec, history), turn_timeout)
                except (TurnFailed, anthropic.APIError, httpx2.HTTPError, TimeoutError) as exc:
                    _failed(rec, exc)
                turn += 1

        try:
            await _run_clients(cmd, rec, [direct_loop(i) for i in range(clients)])
        finally:
            await client.close()
        return {"target": target, "clients": clients, **rec.result()}

    sockets = await open_clients(cmd["url"], clients)
    # The clock starts once every socket is open: connecting is the idle scenario's business, not this one's.
    rec = recorder()

    async def ws_loop(i: int, gw: GatewayClient) -> None:
        session_id: str | None = None
        turn = 0
        while time.perf_counter() < rec.end:
            if turn % per_session == 0:
                session_id = None
            try:
                session_id = await ws_turn(gw, content_for(i, turn), session_id, rec, turn_timeout)
            except TurnFailed as exc:
                _failed(rec, exc)
                if gw.closed:
                    return
            turn += 1

    try:
        await _run_clients(cmd, rec, [ws_loop(i, gw) for i, gw in enumerate(sockets)])
    finally:
        await close_clients(sockets)
    return {"target": target, "clients": clients, **rec.result()}


async def op_idle(cmd: dict[str, Any]) -> dict[str, Any]:
    """Server memory per idle connection, then `streaming` of those connections streaming at once."""
    pid, n, streaming = int(cmd["pid"]), int(cmd["connections"]), int(cmd["streaming"])
    settle_s = float(cmd.get("settle_s", 1.0))
    timeout_s = float(cmd.get("turn_timeout_s", 120))
    # Warm the server first (first turn builds the SDK client, loads caches), so the delta is the sockets alone.
    warm = (await open_clients(cmd["url"], 1))[0]
    await ws_turn(warm, content_for(-1, 0), None, None, timeout_s)
    await warm.close()
    await asyncio.sleep(settle_s)
    before = rss_kb(pid)
    sockets = await open_clients(cmd["url"], n)
    try:
        pongs = await asyncio.gather(*(ws_request(gw, {"type": "ping"}) for gw in sockets), return_exceptions=True)
        answered = sum(1 for p in pongs if isinstance(p, dict) and p.get("type") == "pong")
        await asyncio.sleep(settle_s)
        idle = rss_kb(pid)
        rec = Recorder(start=time.perf_counter(), end=time.perf_counter() + 3600, stall_s=float(cmd.get("stall_s", 10)))
        started = time.perf_counter()
        results = await asyncio.gather(
            *(ws_turn(gw, content_for(i, 0), None, rec, timeout_s) for i, gw in enumerate(sockets[:streaming])),
            return_exceptions=True,
        )
        elapsed = time.perf_counter() - started
        errors: Counter[str] = Counter()
        for r in results:
            if isinstance(r, BaseException):
                errors[getattr(r, "code", type(r).__name__)] += 1
        after = rss_kb(pid)
        still_open = sum(1 for gw in sockets if not gw.closed)
    finally:
        await close_clients(sockets)
    return {
        "connections": n,
        "pongs": answered,
        "rss_before_kb": before,
        "rss_idle_kb": idle,
        "rss_after_streams_kb": after,
        "kb_per_connection": round((idle - before) / n, 2),
        "streaming": streaming,
        "streams_finished": rec.turns_total,
        "stream_errors": dict(errors),
        "streams_s": round(elapsed, 3),
        "ttft_ms": summary(rec.ttft_ms),
        "max_gap_ms": round(rec.max_gap_ms, 1),
        "still_open": still_open,
    }


async def op_query(cmd: dict[str, Any]) -> dict[str, Any]:
    """Each request `runs` times in turn on one socket, after `warmup` unrecorded runs (the first one, cold, kept)."""
    runs, warmup = int(cmd["runs"]), int(cmd.get("warmup", 3))
    out: dict[str, Any] = {}
    gw = (await open_clients(cmd["url"], 1))[0]
    try:
        for spec in cmd["requests"]:
            times: list[float] = []
            cold: float | None = None
            errors: Counter[str] = Counter()
            answer_bytes = 0
            for i in range(warmup + runs):
                started = time.perf_counter()
                try:
                    answer = await ws_request(gw, spec["frame"])
                except TurnFailed as exc:
                    errors[exc.code] += 1
                    answer = {}
                ms = (time.perf_counter() - started) * 1000
                if i == 0:
                    cold = ms
                    answer_bytes = len(json.dumps(answer))
                if i >= warmup:
                    times.append(ms)
            out[spec["name"]] = {
                **summary(times),
                "cold_ms": None if cold is None else round(cold, 3),
                "answer_bytes": answer_bytes,
                "errors": dict(errors),
            }
    finally:
        await gw.close()
    return out


OPS = {"stream": op_stream, "idle": op_idle, "query": op_query, "history": op_history}


async def serve() -> None:
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        cmd = json.loads(line)
        try:
            reply: dict[str, Any] = {"ok": True, "result": await OPS[cmd["op"]](cmd)}
        except Exception as exc:
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def main() -> None:
    raise_fd_limit()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
