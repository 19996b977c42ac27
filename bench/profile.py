"""`--profile`: py-spy records the gateway while it serves each streaming scenario, and the collapsed stacks are
summarised into the functions that hold the CPU (self time) and the calls that contain it (inclusive time).

Needs `pip install py-spy` in the venv (not a dependency: only profiling runs need it). Samples only threads that
hold the GIL (`--gil`): the event loop's idle waits and the database thread's blocking calls do not count as work.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
from collections import Counter
from pathlib import Path

from .procs import Proc, spawn

RATE_HZ = 500

# Where a turn's CPU goes, by the first of these that a sample's stack contains (checked in order). The names are
# the gateway's and the SDK's own functions, so a refactor that renames one shows up here as "other".
PHASES: list[tuple[str, tuple[str, ...]]] = [
    ("database thread (SQLAlchemy + sqlite3)", ("Thread.run (",)),
    ("SDK: build and send the request, read headers", ("Upstream.stream (", "AsyncMessages.create (")),
    ("SDK: read and decode the SSE stream", ("EventStream.__aiter__ (", "AsyncStream.__aiter__ (")),
    ("aiohttp client: upstream bytes in", ("client_proto.py",)),
    ("waiting on / handing off to the database thread", ("Database.run (", "SqliteThreads.run (")),
    ("context: workspace, assemble, count tokens", ("measure (", "assemble (", "WorkspaceLoader.load (")),
    ("turn end: price, usage row, log line, metrics", ("settle (", "Turn._finish (")),
    ("WebSocket out: frames to the client", ("Connection.send_raw (", "Connection.send (", "send_str (")),
    ("WebSocket in: read, parse, validate, dispatch", ("Connection.handle_text (", "gateway_ws (")),
    ("checkpoint timer", ("Checkpointer.",)),
    ("rest of the turn (locks, relay loop, budgets)", ("Turn.", "relay (bench")),
    ("event loop and everything else", ("",)),
]


def py_spy() -> str:
    found = shutil.which("py-spy")
    if found is None:
        raise RuntimeError("--profile needs py-spy: pip install py-spy")
    return found


async def start(pid: int, out: Path, log_dir: Path) -> Proc:
    argv = [py_spy(), "record", "--pid", str(pid), "--format", "raw", "--gil", "--rate", str(RATE_HZ), "-o", str(out)]
    p = await spawn(f"py-spy-{out.stem}", argv, log_dir)
    await asyncio.sleep(0.5)  # attaching takes a moment
    p.check_alive()
    return p


async def stop(p: Proc) -> None:
    """SIGINT makes py-spy write its file and exit."""
    if p.proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            p.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(p.proc.wait(), 30)
        except TimeoutError:
            await p.stop()


def _frame_name(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/module.py:123)"; keep the function and the file's tail.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, _line = where.rpartition(":")
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"


def summarize(raw: Path, top: int = 25) -> str:
    """Top functions by self and by inclusive samples, as percentages of all samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        phases[next(name for name, marks in PHASES if any(m in stack for m in marks))] += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    if total == 0:
        return "no samples"
    lines = [f"{total} samples ({RATE_HZ}/s, GIL held)", "", "phase %  where the CPU went"]
    lines += [f"{100 * phases[name] / total:6.1f}  {name}" for name, _ in PHASES]
    lines += ["", "self %  function"]
    lines += [f"{100 * n / total:6.1f}  {name}" for name, n in own.most_common(top)]
    lines += ["", "incl %  function"]
    lines += [f"{100 * n / total:6.1f}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    print(summarize(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
