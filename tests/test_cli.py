"""The command line as a user runs it: keys in the vault, and `agentspace serve` from start to SIGTERM."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import sqlite3
import stat
import sys
from pathlib import Path

import aiohttp
import pytest

from gateway.cli import main
from tests.fake_anthropic import FakeAnthropic

REPO = Path(__file__).resolve().parent.parent


def test_keys_set_list_remove(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("AGENTSPACE_HOME", str(home))
    monkeypatch.setattr(sys, "stdin", io.StringIO("sk-ant-api03-secretsecret-abcd\n"))
    assert main(["keys", "set", "anthropic"]) == 0
    vault = home / "keys.json"
    assert stat.S_IMODE(vault.stat().st_mode) == 0o600
    assert json.loads(vault.read_text()) == {"anthropic": "sk-ant-api03-secretsecret-abcd"}
    capsys.readouterr()
    assert main(["keys", "list"]) == 0
    listed = capsys.readouterr().out
    assert "anthropic" in listed and "abcd" in listed and "secretsecret" not in listed
    assert main(["keys", "remove", "anthropic"]) == 0
    assert json.loads(vault.read_text()) == {}
    assert main(["keys", "remove", "anthropic"]) == 1


def test_key_is_never_taken_from_argv() -> None:
    with pytest.raises(SystemExit):
        main(["keys", "set", "anthropic", "sk-ant-oops"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_serve_chat_restart_and_sigterm(tmp_path: Path, fake: FakeAnthropic) -> None:
    """Start the real CLI, chat over a real socket, stop it with SIGTERM, and find everything in the database."""
    port = _free_port()
    home = tmp_path / "servehome"
    env = {
        **os.environ,
        "AGENTSPACE_HOME": str(home),
        "ANTHROPIC_API_KEY": "test-key",
        "ANTHROPIC_BASE_URL": str(fake.base_url),
    }
    env.pop("AGENTSPACE_DB_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--port",
        str(port),
        env=env,
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as http:
            health = None
            for _ in range(1200):  # bounded (60 s): start-up is ~1 s idle, but 10 s+ on a loaded 2-core machine
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                        health = await response.json()
                        break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            assert health is not None and health["status"] == "ok"
            async with http.ws_connect(f"ws://127.0.0.1:{port}/gateway") as ws:
                await ws.send_json({"type": "chat.send", "id": "t1", "content": "hello over the wire"})
                frames = []
                while not frames or frames[-1]["type"] not in ("chat.stream.end", "error"):
                    frames.append(await ws.receive_json(timeout=10))
                assert frames[-1]["type"] == "chat.stream.end"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    db = sqlite3.connect(home / "gateway.db")
    assert db.execute("select count(*) from sessions").fetchone()[0] == 1
    assert db.execute("select role, status from messages order by seq").fetchall() == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert db.execute("select request_count from usage_by_model").fetchone()[0] == 1
    assert db.execute("pragma integrity_check").fetchone()[0] == "ok"


def test_serve_refuses_public_bind_without_token(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("AGENTSPACE_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", str(_free_port())]) == 2
    assert "token" in capsys.readouterr().err
