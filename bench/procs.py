"""The processes a benchmark run needs, each started on loopback and stopped by its own pid.

Every wait here is bounded: a process that does not come up in time fails the run with its log's tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
FD_LIMIT = 16384


def raise_fd_limit(wanted: int = FD_LIMIT) -> int:
    """1,000 idle sockets plus the upstream ones need more descriptors than the usual 1,024; children inherit this."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_kb(pid: int) -> int:
    """Resident memory of one process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time one process has used so far, from /proc (Linux)."""
    # Fields after the command name (which may hold spaces, hence the split at the last ')'): utime is the 12th.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started and that still run (a gateway's workers), from /proc (Linux)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def tree_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of a process and of each of its children, by pid: `serve --workers N` is N + 1 processes."""
    return {p: cpu_seconds(p) for p in (pid, *child_pids(pid))}


@dataclass
class Proc:
    name: str
    proc: asyncio.subprocess.Process
    log_path: Path
    url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.proc.returncode is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")

    async def stop(self) -> None:
        """SIGTERM (the gateway then ends its streams cleanly), SIGKILL only if it does not exit in time."""
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


async def spawn(name: str, argv: list[str], log_dir: Path, env: dict[str, str | None] | None = None, **kw: Any) -> Proc:
    """Start `argv` from the repo root with `env` over ours (None removes a variable), output to a log file."""
    log_path = log_dir / f"{name}.log"
    merged = {**os.environ, **(env or {})}
    child_env = {k: v for k, v in merged.items() if v is not None}
    log = log_path.open("wb")
    creating = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv, cwd=str(REPO_ROOT), env=child_env, stdout=kw.pop("stdout", log), stderr=log, **kw
        )
    )
    try:
        # Cancelling create_subprocess_exec midway can hang the loop's shutdown (CPython 3.11): let it finish,
        # then stop the child it made.
        proc = await asyncio.shield(creating)
    except asyncio.CancelledError:
        orphan = await creating
        with contextlib.suppress(ProcessLookupError):
            orphan.kill()
        await orphan.wait()
        raise
    finally:
        log.close()  # the child holds its own descriptor
    return Proc(name, proc, log_path)


@contextlib.asynccontextmanager
async def stopped_on_failure(p: Proc) -> AsyncIterator[Proc]:
    """Until the block succeeds, any failure or cancellation stops the process instead of leaking it."""
    try:
        yield p
    except BaseException:
        await p.stop()
        raise


async def wait_http(p: Proc, url: str, within_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            p.check_alive()
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{p.name} did not answer {url} within {within_s:.0f} s:\n{p.log_tail()}")


@dataclass(frozen=True)
class UpstreamConfig:
    """The fake Anthropic server's cadence: reply length in words (one delta each) and the pause before each."""

    words: int
    delay_ms: float
    thinking: bool = False


def fake_url() -> str:
    """Where the next fake upstream will listen: chosen up front so its clients can start before it is up."""
    return f"http://127.0.0.1:{free_port()}"


async def start_fake(cfg: UpstreamConfig, url: str, log_dir: Path) -> Proc:
    port = int(url.rsplit(":", 1)[1])
    argv = [sys.executable, "-m", "tests.fake_anthropic", "--port", str(port), "--words", str(cfg.words)]
    argv += ["--delay-ms", str(cfg.delay_ms), "--thinking" if cfg.thinking else "--no-thinking"]
    p = await spawn("fake_anthropic", argv, log_dir, stdout=asyncio.subprocess.PIPE)
    assert p.proc.stdout is not None
    async with stopped_on_failure(p):
        try:
            # It prints its URL once it listens and handles signals.
            line = await asyncio.wait_for(p.proc.stdout.readline(), START_TIMEOUT_S)
        except TimeoutError:
            raise RuntimeError(f"the fake upstream did not start:\n{p.log_tail()}") from None
        if not line:
            raise RuntimeError(f"the fake upstream exited:\n{p.log_tail()}")
        p.url = line.decode().strip()
        if p.url != url:
            raise RuntimeError(f"the fake upstream listens at {p.url}, not {url}")
    return p


def agentspace_argv() -> list[str]:
    """`agentspace serve` as installed beside this interpreter; `python -m gateway` if the script is missing."""
    script = Path(sys.executable).with_name("agentspace")
    if script.exists():
        return [str(script)]
    found = shutil.which("agentspace")
    return [found] if found else [sys.executable, "-m", "gateway"]


def gateway_env(home: Path, upstream_url: str, db_url: str | None) -> dict[str, str | None]:
    config_dir = home / "anthropic-config"
    config_dir.mkdir(parents=True, exist_ok=True)
    env: dict[str, str | None] = {
        "AGENTSPACE_HOME": str(home),
        "ANTHROPIC_API_KEY": "test",
        "ANTHROPIC_BASE_URL": upstream_url,
        "ANTHROPIC_CONFIG_DIR": str(config_dir),
        # The load is trusted and a fast single client sends more than the default 50 frames/s; a huge rate keeps the
        # limiter's code path (and its cost) in the measurement without refusing anything.
        "AGENTSPACE_FRAMES_PER_SECOND": "1000000",
        "AGENTSPACE_FRAME_BURST": "1000000",
        # The idle scenario holds 1,500 sockets, all from 127.0.0.1: beyond the default caps (256 per address).
        "AGENTSPACE_MAX_CONNECTIONS": "4096",
        "AGENTSPACE_MAX_CONNECTIONS_PER_ADDRESS": "4096",
        # A bench gateway is not the user's: it must not replace the discovery file their CLI reads.
        "AGENTSPACE_RUNTIME_FILE": "off",
    }
    # Nothing from the caller's own gateway setup may leak in: its database, token, or SDK credentials.
    for unwanted in ("AGENTSPACE_DB_URL", "AGENTSPACE_TOKEN", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE"):
        env[unwanted] = None
    if db_url is not None:
        env["AGENTSPACE_DB_URL"] = db_url
    return env


async def start_gateway(
    home: Path, upstream_url: str, db_url: str | None, log_dir: Path, name: str = "gateway", workers: int = 1
) -> Proc:
    port = free_port()
    env = gateway_env(home, upstream_url, db_url)
    argv = [*agentspace_argv(), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    p = await spawn(name, argv, log_dir, env)
    async with stopped_on_failure(p):
        await wait_http(p, f"http://127.0.0.1:{port}/healthz")
        # /healthz answers once one worker is up; the load must find all of them serving.
        while (
            workers > 1 and len(set(re.findall(r"worker \d+ ready", p.log_path.read_text(errors="replace")))) < workers
        ):
            p.check_alive()
            await asyncio.sleep(0.05)
    p.url = f"ws://127.0.0.1:{port}/gateway"
    return p


async def start_bare(upstream_url: str, log_dir: Path) -> Proc:
    port = free_port()
    env: dict[str, str | None] = {"ANTHROPIC_API_KEY": "test", "ANTHROPIC_BASE_URL": upstream_url}
    env |= {"ANTHROPIC_AUTH_TOKEN": None, "ANTHROPIC_PROFILE": None}
    p = await spawn("bare_relay", [sys.executable, "-m", "bench.bare_relay", "--port", str(port)], log_dir, env)
    async with stopped_on_failure(p):
        await wait_http(p, f"http://127.0.0.1:{port}/healthz")
    p.url = f"ws://127.0.0.1:{port}/gateway"
    return p
