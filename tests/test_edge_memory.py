"""Memory before authentication, measured on the real `agentspace serve` process as the attack was (issue 14):
300 unauthenticated sockets, half pushing most of a frame that claims 5 MB, half holding a frame they never finish.
Before the frame guard this took the process from 166 to 1,365 MiB."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from pathlib import Path

import aiohttp

from tests.fake_anthropic import FakeAnthropic
from tests.raw_ws import header, upgrade

REPO = Path(__file__).resolve().parent.parent
TOKEN = "memory-test-token-0123456789-abcdefghijkl"
SOCKETS = 300
# Measured after the fix: +1 to +3 MiB. The bound leaves room for a loaded machine's allocator, not for buffering
# frames (one pushed frame alone would be 4.5 MiB, all of them 675 MiB).
BOUND_MIB = 40


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _push(port: int) -> None:
    with contextlib.suppress(OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
        status, raw = await upgrade("127.0.0.1", port)
        if status == 101 and await raw.send(header(5_000_000)):
            for _ in range(72):  # 4.5 MiB, unless the gateway hangs up first
                if not await raw.send(b" " * 65536):
                    break
        raw.close()


async def _hold(port: int) -> None:
    with contextlib.suppress(OSError, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
        status, raw = await upgrade("127.0.0.1", port)
        if status == 101:
            await raw.send(header(8000) + b" " * 7000)  # within the pre-auth allowance, never finished
            await raw.frames(within_s=30)  # until the gateway lets go
        raw.close()


async def test_hundreds_of_unauthenticated_sockets_stay_within_a_memory_bound(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "AGENTSPACE_HOME": str(tmp_path / "home"),
        "ANTHROPIC_API_KEY": "test-key",
        "ANTHROPIC_BASE_URL": str(fake.base_url),
        "AGENTSPACE_TOKEN": TOKEN,
        "AGENTSPACE_AUTH_TIMEOUT_S": "1",
    }
    env.pop("AGENTSPACE_DB_URL", None)
    log = (tmp_path / "serve.log").open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", str(port), env=env, cwd=REPO, stderr=log
    )
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(60):
            while True:
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.05)
        before = peak = _rss_mib(proc.pid)
        attacks = [asyncio.create_task(_push(port) if n % 2 else _hold(port)) for n in range(SOCKETS)]
        while not all(task.done() for task in attacks):
            peak = max(peak, _rss_mib(proc.pid))
            await asyncio.wait(attacks, timeout=0.05)
        peak = max(peak, _rss_mib(proc.pid))
        assert peak - before < BOUND_MIB, f"RSS {before:.0f} -> {peak:.0f} MiB"
        assert proc.returncode is None  # and it is still serving
    finally:
        proc.kill()
        await proc.wait()
        log.close()
