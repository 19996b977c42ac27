"""`python -m bench`: the gateway measured side by side with the same load sent straight to the upstream (*direct*)
and through a bare relay (*bare*), scenario by scenario. Prints a table; writes the full results as JSON.

    python -m bench                      # everything, a few minutes (SQLite)
    python -m bench --quick              # every scenario, tiny, a few seconds: proves the harness works
    python -m bench --only ttft1,turns   # some scenarios
    python -m bench --only turns,deltas --workers 2   # the gateway as `agentspace serve --workers 2`
    python -m bench --db-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres   # creates/drops its own DBs
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from .procs import REPO_ROOT, raise_fd_limit
from .report import build_rows, format_table, markdown_table, rows_json
from .runner import run_plan
from .scenarios import KEYS, make_plan

RESULTS_DIR = REPO_ROOT / "bench" / "results"


def _first(path: str, prefix: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict[str, Any]:
    mem = _first("/proc/meminfo", "MemTotal")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
    return {
        "nproc": os.cpu_count(),
        "cpu": _first("/proc/cpuinfo", "model name"),
        "memory": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: version(p) for p in ("aiohttp", "anthropic", "sqlalchemy", "aiosqlite")},
        "commit": commit.stdout.strip() or None,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="tiny counts, one set of processes: a few seconds")
    parser.add_argument("--only", help=f"comma-separated scenarios among {','.join(KEYS)}")
    parser.add_argument("--duration", type=float, help="seconds each streaming scenario measures, per target")
    parser.add_argument("--db-url", help="a PostgreSQL server URL; the bench creates and drops its own databases there")
    parser.add_argument("--workers", type=int, default=1, help="run the gateway with `serve --workers N`")
    parser.add_argument("--out", type=Path, help="where to write the JSON (default bench/results/<time>.json)")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown (for the docs)")
    parser.add_argument("--check", action="store_true", help="exit 1 if any target is missed")
    parser.add_argument(
        "--profile", action="store_true", help="record both relays with py-spy in each streaming scenario"
    )
    args = parser.parse_args(argv)
    if args.workers > 1 and "idle" in (args.only.split(",") if args.only else ["idle"]):
        parser.error("--workers: the idle scenario measures one process's memory; choose scenarios with --only")
    if args.db_url is not None and not args.db_url.startswith("postgresql"):
        parser.error("--db-url is for PostgreSQL; SQLite is the default and gets a fresh file per run")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit()
    plan = make_plan(args.quick, args.only.split(",") if args.only else None, args.duration, args.workers)
    started = datetime.now(UTC)
    load_before = load_average()
    t0 = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {message}", file=sys.stderr, flush=True)

    profile_dir = None
    if args.profile:
        profile_dir = RESULTS_DIR / f"profile-{started.strftime('%Y%m%d-%H%M%S')}"
        profile_dir.mkdir(parents=True)
    results = asyncio.run(run_plan(plan, args.db_url, log, profile_dir))
    rows = build_rows(results)
    machine_info = machine()
    report = {
        "started": started.isoformat(),
        "seconds": round(time.perf_counter() - t0, 1),
        "command": shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])]),
        "quick": plan.quick,
        "database": "postgresql" if args.db_url else "sqlite",
        "workers": plan.workers,
        "machine": machine_info,
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "rows": rows_json(rows),
        "scenarios": results,
    }
    out = args.out or RESULTS_DIR / f"{started.strftime('%Y%m%d-%H%M%S')}{'-quick' if plan.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if args.out is None:
        (RESULTS_DIR / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    m = machine_info
    print(
        f"\n{m['nproc']} x {m['cpu']}, {m['memory']}, Python {m['python']}, {report['database']}, "
        f"{plan.workers} gateway worker(s); "
        f"load average {load_before[0]} -> {load_average()[0]}; {report['seconds']} s"
    )
    if plan.quick:
        print("(--quick: tiny counts to prove the harness runs; the figures mean nothing)")
    print(format_table(rows))
    if args.markdown:
        print()
        print(markdown_table(rows))
    print(f"\nresults: {out}")
    missed = [r for r in rows if r.ok is False]
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
