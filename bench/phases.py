"""Where one turn's time goes before its first token, phase by phase: `agentspace serve` with timestamps taken at a
few points of a turn (wrappers put around the gateway's own functions in its process), while one client continues a
session turn after turn (the `history` scenario's load), then the same load sent straight to the upstream.

    python -m bench.phases --messages 0 --turns 200

Prints the median and P90 of each step between two points, from the `chat.send` frame parsed to the first delta
written back, beside the first token the client saw, through the gateway and direct. For finding what to change; the
wrappers cost a few microseconds a point, so the figures of record stay `python -m bench`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .procs import UpstreamConfig, fake_url, free_port, gateway_env, raise_fd_limit, spawn, start_fake, wait_http
from .runner import LoadGen, in_scratch, seed

# A turn's points, in the order they are reached (a point a turn skips leaves its neighbours adjacent).
Marks = list[tuple[str, float]]


def serve_traced(out: str, argv: list[str]) -> None:
    """In the gateway's process: wrap the turn's steps so each records when it begins and ends, run `agentspace
    <argv>`, and write every turn's points to `out` (JSON) at exit."""
    import atexit

    from gateway.chat import metrics, turn
    from gateway.context import workspace

    turns: list[Marks] = []

    def mark(name: str) -> None:
        if turns:
            turns[-1].append((name, time.perf_counter()))

    def around(owner: Any, name: str, label: str) -> None:
        wrapped: Callable[..., Any] = getattr(owner, name)
        if asyncio.iscoroutinefunction(wrapped):

            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                mark(f"{label} <")
                result = await wrapped(*args, **kwargs)
                mark(f"{label} >")
                return result

            setattr(owner, name, timed_async)
        else:

            def timed(*args: Any, **kwargs: Any) -> Any:
                mark(f"{label} <")
                result = wrapped(*args, **kwargs)
                mark(f"{label} >")
                return result

            setattr(owner, name, timed)

    observer = metrics.TurnObserver
    received, request, headers, relayed = (observer.__init__, observer.upstream_request, observer.upstream_headers,
                                           observer.relayed)  # fmt: skip

    def on_received(self: Any, *args: Any) -> None:
        received(self, *args)
        turns.append([("chat.send parsed", self._received)])

    def on_request(self: Any) -> None:
        mark("upstream request sent")
        request(self)

    def on_headers(self: Any) -> None:
        mark("upstream headers")
        headers(self)

    def on_relayed(self: Any, at: float) -> None:
        if not self._first_token:
            mark("first delta written")
            turns[-1].insert(-1, ("first delta received", at))
        relayed(self, at)

    observer.__init__ = on_received  # type: ignore[method-assign,assignment]
    observer.upstream_request = on_request  # type: ignore[method-assign]
    observer.upstream_headers = on_headers  # type: ignore[method-assign]
    observer.relayed = on_relayed  # type: ignore[method-assign,assignment]
    around(workspace.WorkspaceLoader, "load", "workspace")
    around(turn, "assemble", "assemble")
    around(turn, "measure", "count tokens")
    around(turn.Turn, "check_window", "window")
    around(turn.Turn, "reserve_budget", "budget")
    around(turn, "write_begun", "write user turn")
    around(turn.Turn, "announce", "start frame")
    atexit.register(lambda: Path(out).write_text(json.dumps(turns)))

    from gateway.cli import main

    main(argv)


def steps(turns: list[Marks]) -> dict[str, list[float]]:
    """Milliseconds between consecutive points, by step, and the whole of each turn."""
    out: dict[str, list[float]] = {}
    for marks in turns:
        for (a, at), (b, bt) in itertools.pairwise(marks):
            out.setdefault(f"{a} -> {b}", []).append((bt - at) * 1000)
        whole = (marks[-1][1] - marks[0][1]) * 1000
        out.setdefault("whole: chat.send parsed -> first delta written", []).append(whole)
    return out


async def run(args: argparse.Namespace) -> None:
    await in_scratch("agentspace-phases-", args.db_url, lambda work, home, db_url: _measure(args, work, home, db_url))


async def _measure(args: argparse.Namespace, work: Path, home: Path, db_url: str) -> None:
    if args.messages:
        await seed(db_url, home, None, work, (args.messages,))
    upstream_url = fake_url()
    fake = await start_fake(UpstreamConfig(words=10, delay_ms=2.0), upstream_url, work)
    port = free_port()
    trace = work / "phases.json"
    code = f"import sys; from bench.phases import serve_traced; serve_traced({str(trace)!r}, sys.argv[1:])"
    serve = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    env = gateway_env(home, upstream_url, db_url if args.db_url else None)
    gateway = await spawn("gateway", [sys.executable, "-c", code, *serve], work, env)
    load = await LoadGen.start(work)
    try:
        await wait_http(gateway, f"http://127.0.0.1:{port}/healthz")
        cmd: dict[str, Any] = {"op": "history", "messages": args.messages, "turns": args.turns, "warmup": 3}
        url = f"ws://127.0.0.1:{port}/gateway"
        through = await load.run(cmd | {"target": "gateway", "url": url, "pid": gateway.pid}, 600)
        direct = await load.run(cmd | {"target": "direct", "url": upstream_url, "pid": load.proc.pid}, 600)
    finally:
        await load.stop()
        await gateway.stop()
        await fake.stop()
    for name, result in (("gateway", through), ("direct", direct)):
        ttft = result["ttft_ms"]
        print(f"first token at the client, {name}: P50 {ttft['p50']} ms, P90 {ttft['p90']} ms")
    recorded = json.loads(trace.read_text())[-args.turns :]  # the warm-up turns left out
    for step, ms in steps(recorded).items():
        ms.sort()
        print(f"{step:58s} n={len(ms):4d}  P50 {statistics.median(ms):7.3f} ms  P90 {ms[int(len(ms) * 0.9)]:7.3f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=0, help="earlier messages in the session")
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--db-url", help="a PostgreSQL server: the run creates a database there and drops it after")
    raise_fd_limit()
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
