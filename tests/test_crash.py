"""The real `agentspace serve` process killed mid-stream (kill -9) and stopped mid-stream (SIGTERM)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSCloseCode, WSMsgType

from tests.fake_anthropic import FakeAnthropic, Reply

REPO = Path(__file__).resolve().parent.parent
TEXT = "one two three four five six"
WAIT_S = 30  # generous bounds: these waits end as soon as their event happens, and the suite may share the CPU


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Served:
    """`python -m gateway serve` in a subprocess, on its own port, with its home in a temp folder."""

    def __init__(self, home: Path, fake: FakeAnthropic) -> None:
        self.home = home
        self.port = _free_port()
        self.env = {
            **os.environ,
            "AGENTSPACE_HOME": str(home),
            "ANTHROPIC_API_KEY": "test-key",
            "ANTHROPIC_BASE_URL": str(fake.base_url),
            "AGENTSPACE_CHECKPOINT_INTERVAL_S": "0.05",
        }
        self.env.pop("AGENTSPACE_DB_URL", None)
        self.env.pop("AGENTSPACE_TOKEN", None)
        self.proc: asyncio.subprocess.Process | None = None
        self.log = (home.parent / "serve.log").open("ab")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, http: aiohttp.ClientSession) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "gateway", "serve", "--port", str(self.port)),
            env=self.env,
            cwd=REPO,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=self.log,  # kept in tmp_path: the first place to look when this test fails
        )
        async with asyncio.timeout(60):  # a second or two; far more on a busy machine
            while True:
                try:
                    async with http.get(f"{self.url}/healthz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientConnectionError:
                    pass
                # A gateway that exited (a port taken meanwhile, a start-up error) will never answer: say so now.
                exited = self.proc.returncode
                assert exited is None, f"the gateway exited with {exited}; see {self.log.name}"
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.log.close()

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.home / "gateway.db")


async def _until(predicate: Callable[[], bool]) -> None:
    """The subprocess writes on its own schedule; look until it has (bounded)."""
    async with asyncio.timeout(WAIT_S):
        while not predicate():  # noqa: ASYNC110 - another process's database write has no event to wait on
            await asyncio.sleep(0.02)


async def _stream_until_held(ws: aiohttp.ClientWebSocketResponse, deltas: int, **fields: Any) -> list[dict[str, Any]]:
    await ws.send_json({"type": "chat.send", "id": "t1", "content": "tell me a long story", **fields})
    frames: list[dict[str, Any]] = []
    while len([f for f in frames if f["type"] == "chat.stream.delta"]) < deltas:
        frames.append(await ws.receive_json(timeout=WAIT_S))
    return frames


async def test_kill_9_mid_stream_restart_then_sigterm_mid_stream(tmp_path: Path, fake: FakeAnthropic) -> None:
    """One story, two process starts (each costs seconds): crash, recover, then stop cleanly in the middle of a
    stream."""
    served = Served(tmp_path / "home", fake)
    fake.wait_timeout = WAIT_S
    fake.queue(Reply(text=TEXT, thinking=None, hold_after_deltas=3))
    async with aiohttp.ClientSession() as http:
        try:
            await served.start(http)
            async with http.ws_connect(f"{served.url}/gateway") as ws:
                frames = await _stream_until_held(ws, 3)
                session_id = frames[0]["sessionId"]

                def checkpointed() -> bool:
                    row = served.db().execute("select text from messages where role = 'assistant'").fetchone()
                    return row is not None and row[0] == "one two three "

                await _until(checkpointed)  # within one checkpoint interval of the last delta
                assert served.proc is not None
                served.proc.kill()  # SIGKILL: no shutdown code runs
                await served.proc.wait()
            db = served.db()
            assert db.execute("select status from messages where role = 'assistant'").fetchone() == ("streaming",)
            db.close()

            await served.start(http)  # the same home: recovery runs at start-up
            async with http.ws_connect(f"{served.url}/gateway") as ws:
                await ws.send_json({"type": "session.history", "sessionId": session_id})
                history = await ws.receive_json(timeout=WAIT_S)
                user, reply = history["messages"]
                assert (user["role"], user["text"], user["status"]) == ("user", "tell me a long story", "complete")
                assert (reply["status"], reply["text"]) == ("interrupted", "one two three ")

                # Not stuck busy: the session takes a new message at once, and the partial reply is its context.
                fake.queue(Reply(text=TEXT, thinking=None, hold_after_deltas=2))
                await _stream_until_held(ws, 2, sessionId=session_id)
                sent = fake.requests[-1].body["messages"]
                assert [m["role"] for m in sent] == ["user", "assistant", "user"]
                assert [b["text"] for b in sent[1]["content"]] == ["one two three "]

                # SIGTERM now: the stream gets its one terminal frame, then the socket closes with 1001.
                assert served.proc is not None
                served.proc.send_signal(signal.SIGTERM)
                end = await ws.receive_json(timeout=WAIT_S)
                assert end["type"] == "chat.stream.end", end
                assert (end["stopReason"], end["status"]) == ("interrupted", "interrupted")
                closing = await ws.receive(timeout=WAIT_S)
                assert closing.type == WSMsgType.CLOSE and ws.close_code == WSCloseCode.GOING_AWAY
            assert await asyncio.wait_for(served.proc.wait(), timeout=WAIT_S) == 0
            assert await fake.wait_stream_closed() is True  # and the upstream request was stopped, not abandoned
        finally:
            await served.stop()
    db = served.db()
    assert db.execute("pragma integrity_check").fetchone() == ("ok",)
    assert db.execute("select text, status from messages where role = 'assistant' order by seq").fetchall() == [
        ("one two three ", "interrupted"),
        ("one two ", "interrupted"),
    ]
