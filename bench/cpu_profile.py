"""The gateway's CPU per turn, deterministically: `agentspace serve` under cProfile (its event-loop thread) while the
load generator drives one scenario, then the functions that took the time. For finding what to change; py-spy
(`python -m bench --profile`) is the one to compare relays with, since cProfile's own cost is per call.

    python -m bench.cpu_profile history --messages 1000 --turns 60
    python -m bench.cpu_profile turns --clients 100 --duration 8
    python -m bench.cpu_profile turns --no-profile      # CPU per turn only, no cProfile overhead
"""

from __future__ import annotations

import argparse
import asyncio
import pstats
import signal
import sys
from pathlib import Path
from typing import Any

from .procs import (
    UpstreamConfig,
    cpu_seconds,
    fake_url,
    free_port,
    gateway_env,
    raise_fd_limit,
    spawn,
    start_fake,
    wait_http,
)
from .runner import LoadGen, in_scratch, seed


def serve_profiled(out: str, argv: list[str]) -> None:
    """In the gateway's process: run `agentspace <argv>`, profiled from SIGUSR1 on (start-up's imports left out),
    writing the stats on a clean exit."""
    import cProfile
    import signal

    from gateway.cli import main

    profiler = cProfile.Profile()
    signal.signal(signal.SIGUSR1, lambda *_: profiler.enable())
    try:
        main(argv)
    finally:
        profiler.disable()
        profiler.dump_stats(out)


async def run(args: argparse.Namespace) -> None:
    await in_scratch("agentspace-cpuprof-", args.db_url, lambda work, home, db_url: _measure(args, work, home, db_url))


async def _measure(args: argparse.Namespace, work: Path, home: Path, db_url: str) -> None:
    sizes = (args.messages,) if args.scenario == "history" else ()
    if sizes:
        await seed(db_url, home, None, work, sizes)
    words, delay = (10, 2.0) if args.scenario == "history" else (args.words, 0.0)
    upstream_url = fake_url()
    fake = await start_fake(UpstreamConfig(words=words, delay_ms=delay), upstream_url, work)
    port = free_port()
    env = gateway_env(home, upstream_url, db_url if args.db_url else None)
    serve = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    stats = work / "gateway.prof"
    code = f"import sys; from bench.cpu_profile import serve_profiled; serve_profiled({str(stats)!r}, sys.argv[1:])"
    argv = [sys.executable, "-c", code, *serve] if args.profile else [sys.executable, "-m", "gateway", *serve]
    gateway = await spawn("gateway", argv, work, env)
    load = await LoadGen.start(work)
    try:
        await wait_http(gateway, f"http://127.0.0.1:{port}/healthz")
        url = f"ws://127.0.0.1:{port}/gateway"
        if args.profile:
            gateway.proc.send_signal(signal.SIGUSR1)
        before = cpu_seconds(gateway.pid)
        cmd: dict[str, Any]
        if args.scenario == "history":
            cmd = {"op": "history", "target": "gateway", "url": url, "messages": args.messages, "turns": args.turns}
            cmd |= {"warmup": 3, "pid": gateway.pid}
        else:
            cmd = {"op": "stream", "target": "gateway", "url": url, "clients": args.clients, "warmup_s": 2}
            cmd |= {"duration_s": args.duration, "turns_per_session": 10, "stall_s": 2.0}
        result = await load.run(cmd, 600)
        cpu = cpu_seconds(gateway.pid) - before
    finally:
        await load.stop()
        await gateway.stop()
        await fake.stop()
    turns = result["turns_total"]
    print(f"{turns} turns, gateway CPU {cpu:.2f} s, {1000 * cpu / max(1, turns):.2f} ms/turn (whole run)")
    if "cpu_ms_per_turn" in result:
        print(f"CPU per recorded turn: {result['cpu_ms_per_turn']} ms; first token {result['ttft_ms']}")
    if "end_ms" in result:
        print(f"last delta to end: {result['end_ms']}; turns/s {result.get('turns_per_s')}")
        if "ttft_ms" in result and "cpu_ms_per_turn" not in result:
            print(f"first token: {result['ttft_ms']}")
        print(f"stalled: {result.get('stalled')}")
    if args.profile and stats.exists():
        p = pstats.Stats(str(stats))
        p.sort_stats("tottime").print_stats(args.top)
        p.sort_stats("cumulative").print_stats(args.top)
        print(f"stats: {stats}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("scenario", choices=("history", "turns"))
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--turns", type=int, default=60)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--words", type=int, default=20, help="reply length in the turns scenario (deltas: 200)")
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--db-url", help="a PostgreSQL server: the run creates a database there and drops it after")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    raise_fd_limit()
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
