"""`agentspace serve --workers 2` as a user runs it: one port, two gateway processes on one SQLite file. Clients are
spread over both; one stream per session holds across them; 40 concurrent clients leave exact totals; one /metrics
scrape sees both workers; a worker killed with SIGKILL is replaced and its reply marked interrupted; SIGTERM to the
gateway ends every stream with its terminal frame and exits 0, the discovery file removed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.cli import runtime_file
from gateway.cli.workers import worker_count
from tests.fake_anthropic import FakeAnthropic, Reply

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 60.0  # start-up imports the SDK and SQLAlchemy in each process: slow on a loaded 2-core machine


class Served:
    def __init__(self, proc: asyncio.subprocess.Process, runtime: Path) -> None:
        self.proc = proc
        self.runtime = runtime
        self.port = 0
        self.ready: set[int] = set()
        self.lines: list[dict[str, Any]] = []
        self._seen = asyncio.Event()

    async def read_logs(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            self.lines.append(line)
            message = str(line.get("message", ""))
            if message.startswith("worker ") and message.endswith(" ready"):
                self.ready.add(int(message.split()[1]))
            self._seen.set()

    async def wait_for(self, predicate: Any) -> None:
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                self._seen.clear()
                await self._seen.wait()

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(pid) for pid in children]


async def _send(ws: aiohttp.ClientWebSocketResponse, content: str, **fields: Any) -> None:
    await ws.send_json({"type": "chat.send", "id": fields.pop("id", "t"), "content": content, **fields})


async def _until_provisional_row(db_file: Path) -> None:
    """Another process writes it on its own schedule: look until it has (the wait ends as soon as it is there)."""
    async with asyncio.timeout(WAIT_S):
        while True:
            db = sqlite3.connect(db_file)
            try:
                if db.execute("select count(*) from usage_records where status = 'streaming'").fetchone() == (1,):
                    return
            finally:
                db.close()
            await asyncio.sleep(0.02)  # polled: no event crosses the process boundary


async def _terminal(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    frames = []
    while True:
        frame = await ws.receive_json(timeout=WAIT_S)
        frames.append(frame)
        if frame["type"] in ("chat.stream.end", "error"):
            return frames


def test_worker_count() -> None:
    assert worker_count("3") == 3
    assert worker_count("auto") == len(os.sched_getaffinity(0))
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError):
            worker_count(bad)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker pids from /proc")
async def test_two_workers_on_one_sqlite_file(tmp_path: Path, fake: FakeAnthropic) -> None:
    home, runtime = tmp_path / "home", tmp_path / "runtime.json"
    capped = home / "agents" / "capped"
    capped.mkdir(parents=True)
    # Room for two sends' worst case (2,000 output tokens: about $0.0201 each) in flight at once, not three.
    (capped / "agent.toml").write_text("[budget]\ndaily_usd = 0.05\n")
    env = {
        **os.environ,
        "AGENTSPACE_HOME": str(home),
        "AGENTSPACE_RUNTIME_FILE": str(runtime),
        "ANTHROPIC_API_KEY": "test-key",
        "ANTHROPIC_BASE_URL": str(fake.base_url),
    }
    env.pop("AGENTSPACE_DB_URL", None)
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "gateway", "serve", "--workers", "2", "--port", "0", "--log-format", "json"),
        env=env,
        cwd=REPO,
        stderr=asyncio.subprocess.PIPE,
    )
    served = Served(proc, runtime)
    logs = asyncio.ensure_future(served.read_logs())
    try:
        await served.wait_for(lambda: served.ready == {1, 2})
        found = runtime_file.read(runtime)
        assert found is not None and found.pid == proc.pid  # the parent's, written once
        base = f"http://127.0.0.1:{found.port}"
        async with aiohttp.ClientSession() as http:
            await _check_workers(http, base, fake, served, home / "gateway.db")  # ends by sending SIGTERM
        assert await asyncio.wait_for(proc.wait(), WAIT_S) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await logs
    assert not runtime.exists()
    db = sqlite3.connect(home / "gateway.db")
    try:
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
        assert db.execute("select count(*) from messages where status = 'streaming'").fetchone() == (0,)
        statuses = dict(db.execute("select status, count(*) from messages where role = 'assistant' group by status"))
        # 80 from the clients, 2 within budget, 2 in the held session; the one killed with its worker, the one SIGTERM
        # ended.
        assert statuses == {"complete": 84, "interrupted": 2}, statuses
        usage = db.execute("select count(*), count(distinct message_id) from usage_records")
        assert usage.fetchone() == (86, 86)  # the killed worker's reply has its row too, made final by the recovery
        assert dict(db.execute("select status, count(*) from usage_records group by status")) == {
            "complete": 84,
            "interrupted": 2,
        }
        assert db.execute("select count(*) from budget_reservations").fetchone() == (0,)
    finally:
        db.close()


async def _check_workers(
    http: aiohttp.ClientSession, base: str, fake: FakeAnthropic, served: Served, db_file: Path
) -> None:
    ws_url = base.replace("http", "ws") + "/gateway"
    fake.default = Reply(text="an answer in a few words", input_tokens=21, output_tokens=7)

    async def client(n: int) -> None:
        session_id = None
        for turn in range(2):
            async with http.ws_connect(ws_url) as ws:
                await _send(ws, f"client {n} turn {turn}", **({"sessionId": session_id} if session_id else {}))
                frames = await _terminal(ws)
                assert frames[-1]["type"] == "chat.stream.end", frames[-1]
                session_id = frames[0]["sessionId"]

    await asyncio.gather(*(client(n) for n in range(40)))
    async with http.get(f"{base}/metrics") as response:
        metrics = await response.text()
    assert 'agentspace_worker_up{worker="1"} 1' in metrics and 'agentspace_worker_up{worker="2"} 1' in metrics
    turns = [line for line in metrics.splitlines() if line.startswith("agentspace_turns_total{")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in turns) == 80
    assert {line.split('worker="')[1][0] for line in turns} <= {"1", "2"}

    # One budget across the workers: of six sends at once, two fit the cap's room for worst cases, wherever they ran.
    fake.queue(*(Reply(text="within budget", hold_after_deltas=1, input_tokens=10, output_tokens=10) for _ in "ab"))
    sockets = [await http.ws_connect(ws_url) for _ in range(6)]
    for n, ws in enumerate(sockets):
        await _send(ws, "spend", id=f"b{n}", agentId="capped", maxTokens=2000)
    waits = [asyncio.ensure_future(_terminal(ws)) for ws in sockets]
    await fake.wait_held(2)
    while sum(w.done() for w in waits) < 4:
        await asyncio.wait([w for w in waits if not w.done()], return_when=asyncio.FIRST_COMPLETED)
    refused = [w.result()[-1] for w in waits if w.done()]
    assert [(f["type"], f["code"]) for f in refused] == [("error", "BUDGET_EXCEEDED")] * 4, refused
    admitted = [w for w in waits if not w.done()]
    fake.release()
    ends = [(await w)[-1] for w in admitted]
    assert [(f["type"], f["status"]) for f in ends] == [("chat.stream.end", "complete")] * 2
    for ws in sockets:
        await ws.close()

    # One stream per session, whichever worker each connection reached.
    fake.queue(Reply(text="held", hold_after_deltas=1))
    held = await http.ws_connect(ws_url)
    await _send(held, "hold on", id="h")
    session_id = (await held.receive_json(timeout=WAIT_S))["sessionId"]
    await fake.wait_held(3)
    messages = set()
    # The workers share one listening socket and whichever accepts first takes a connection: under load one of them
    # can win dozens in a row (seen once in 40 tries), so try until each has answered, within a generous bound.
    for attempt in range(400):
        async with http.ws_connect(ws_url) as ws:
            await _send(ws, "me too", id=f"r{attempt}", sessionId=session_id)
            frame = (await _terminal(ws))[-1]
            assert (frame["type"], frame["code"]) == ("error", "STREAM_IN_PROGRESS")
            messages.add("another gateway process" in frame["message"])
        if messages == {True, False}:
            break
    assert messages == {True, False}  # refused by the worker streaming it and by the other one
    fake.release()
    assert (await _terminal(held))[-1]["status"] == "complete"
    async with http.ws_connect(ws_url) as ws:
        await _send(ws, "free again", sessionId=session_id)
        assert (await _terminal(ws))[-1]["status"] == "complete"

    # SIGKILL both workers mid-stream: each is replaced, and the new ones find the reply nobody holds.
    fake.queue(Reply(text="doomed", hold_after_deltas=1))
    await _send(held, "this one dies", id="d", sessionId=session_id)
    await fake.wait_held(4)
    # Killed once its request has its provisional usage row (written in the background at the first upstream event),
    # so what the kill leaves is the same every run: that row, made final (`interrupted`) by the recovery.
    await _until_provisional_row(db_file)
    for pid in served.worker_pids():
        os.kill(pid, signal.SIGKILL)
    served.ready.clear()
    await served.wait_for(lambda: served.ready == {1, 2})
    await held.close()  # (its upstream request stays held; the fake lets it go when it closes)
    async with http.ws_connect(ws_url) as ws:
        await ws.send_json({"type": "session.history", "sessionId": session_id})
        history = await ws.receive_json(timeout=WAIT_S)
        assert [m["status"] for m in history["messages"] if m["role"] == "assistant"][-1] == "interrupted"

    # SIGTERM (sent by the caller) while a stream runs: its client gets the terminal frame.
    fake.queue(Reply(text="cut short", hold_after_deltas=1))
    last = await http.ws_connect(ws_url)
    await _send(last, "and now we stop", id="s", sessionId=session_id)
    await fake.wait_held(5)
    served.proc.send_signal(signal.SIGTERM)
    end = (await _terminal(last))[-1]
    assert (end["type"], end.get("status")) == ("chat.stream.end", "interrupted"), end
    await last.close()
