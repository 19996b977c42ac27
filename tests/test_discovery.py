"""The discovery file the original AgentSpace CLI finds its gateway by: written by `agentspace serve` once it listens,
used by `agentspace chat` when no --url is given, removed on exit, a dead gateway's file replaced, a live one's
never touched, and not written by a gateway that may share its database unless asked."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from gateway.cli import runtime_file
from gateway.cli.serve_cmd import _discovery_path
from gateway.settings import Settings
from tests.fake_anthropic import FakeAnthropic

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 25, 10, 30, 0, 123456, tzinfo=UTC)


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_claim_writes_the_original_fields_and_release_removes_only_ours(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "runtime.json"
    assert runtime_file.claim(path, 4567, "127.0.0.1", NOW) is True
    written = json.loads(path.read_text())
    assert written["pid"] == os.getpid() and written["port"] == 4567
    assert written["startedAt"] == "2026-11-25T10:30:00.123Z"  # the gateway's clock, as the original wrote it
    assert runtime_file.discover(path) == runtime_file.read(path)
    # Another (live) process took the file over since: ours to leave.
    path.write_text(json.dumps({"pid": os.getppid(), "port": 1, "startedAt": "x"}))
    runtime_file.release(path)
    assert path.exists()


def test_a_live_gateways_file_is_kept_and_a_dead_ones_replaced(tmp_path: Path) -> None:
    path = tmp_path / "runtime.json"
    live = {"pid": os.getppid(), "port": 3271, "startedAt": "2026-11-25T00:00:00.000Z"}
    path.write_text(json.dumps(live))
    assert runtime_file.claim(path, 5000, "127.0.0.1", NOW) is False
    assert json.loads(path.read_text()) == live
    dead = _dead_pid()
    path.write_text(json.dumps({"pid": dead, "port": 3271, "startedAt": "2026-11-25T00:00:00.000Z"}))
    assert runtime_file.discover(path) is None  # what the original CLI does with a stale file
    assert runtime_file.claim(path, 5000, "127.0.0.1", NOW) is True
    assert json.loads(path.read_text())["port"] == 5000


def test_settings_path_override_and_off(tmp_path: Path) -> None:
    assert Settings.from_env({"HOME": str(tmp_path)}).runtime_file_forced is False
    named = Settings.from_env({"AGENTSPACE_RUNTIME_FILE": str(tmp_path / "r.json")})
    assert named.runtime_file == tmp_path / "r.json" and named.runtime_file_forced
    assert Settings.from_env({"AGENTSPACE_RUNTIME_FILE": "off"}).runtime_file is None


def test_a_shared_database_writes_no_file_unless_asked(tmp_path: Path) -> None:
    import logging

    log = logging.getLogger("test")
    pg = Settings(home=tmp_path, db_url="postgresql+asyncpg://db/x", runtime_file=tmp_path / "r.json")
    assert _discovery_path(pg, log) is None
    assert _discovery_path(pg.with_overrides(runtime_file_forced=True), log) == tmp_path / "r.json"
    sqlite = pg.with_overrides(db_url=f"sqlite+aiosqlite:///{tmp_path / 'g.db'}")
    assert _discovery_path(sqlite, log) == tmp_path / "r.json"


async def _wait_for_file(path: Path, proc: asyncio.subprocess.Process) -> runtime_file.Runtime:
    for _ in range(1200):  # bounded (60 s): start-up takes seconds on a loaded 2-core machine
        found = runtime_file.discover(path)
        if found is not None:
            return found
        assert proc.returncode is None, "serve exited before writing the discovery file"
        await asyncio.sleep(0.05)
    raise AssertionError("no discovery file")


async def test_serve_writes_the_file_chat_finds_it_and_exit_removes_it(tmp_path: Path, fake: FakeAnthropic) -> None:
    path = tmp_path / "config" / "agentspace" / "runtime.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": _dead_pid(), "port": 1, "startedAt": "then"}))  # a crashed gateway's
    home = tmp_path / "servehome"
    env = {
        **os.environ,
        "AGENTSPACE_HOME": str(home),
        "AGENTSPACE_RUNTIME_FILE": str(path),
        "ANTHROPIC_API_KEY": "test-key",
        "ANTHROPIC_BASE_URL": str(fake.base_url),
    }
    env.pop("AGENTSPACE_DB_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "serve", "--port", "0", env=env, cwd=REPO, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        found = await _wait_for_file(path, proc)
        assert found.pid == proc.pid and found.port != 0  # the port actually listened on
        # `agentspace chat` with no --url and nothing else to go on finds the gateway through the file.
        chat = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            "chat",
            "hello via discovery",
            env={**env, "AGENTSPACE_PORT": "1"},  # a wrong default, to prove the file was used
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(chat.communicate(), timeout=60)
        assert chat.returncode == 0, err.decode()
        assert out.decode() == "You said: hello via discovery\n"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert not path.exists()
