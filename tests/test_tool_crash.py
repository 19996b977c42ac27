"""The real `agentspace serve` killed with SIGKILL in the middle of three tool loops at once, one at each stage
(waiting on the model, running a tool, waiting on an approval), then started again: every session takes its next
message at once, the strict fake accepts the replayed history (every call paired with a result), no tool runs again
by itself, and what was open is marked interrupted. Then SIGTERM during an approval wait ends that turn cleanly."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType

from tests.fake_anthropic import FakeAnthropic, Reply, tool_reply, tool_use
from tests.test_crash import WAIT_S, Served

LOCATE = {"name": "locate", "description": "Where the user is.", "input_schema": {"type": "object"}}


def agents(home: Path) -> None:
    for name, toml in (
        ("reader", ""),
        ("client", '[tools.approval]\nlocate = "allow"\n'),
        ("careful", '[tools.approval]\nread_skill = "ask"\n'),
    ):
        root = home / "agents" / name
        (root / "skills" / "pdf").mkdir(parents=True)
        (root / "skills" / "pdf" / "SKILL.md").write_text("---\nname: pdf\ndescription: PDFs.\n---\nbody")
        (root / "agent.toml").write_text(toml)


async def until(ws: aiohttp.ClientWebSocketResponse, kind: str) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1]["type"] != kind:
        frames.append(await ws.receive_json(timeout=WAIT_S))
        assert frames[-1]["type"] not in ("error", "chat.stream.end"), frames[-1]
    return frames


async def test_kill_9_at_each_stage_of_a_tool_loop_then_sigterm(tmp_path: Path, fake: FakeAnthropic) -> None:
    home = tmp_path / "home"
    agents(home)
    served = Served(home, fake)
    fake.wait_timeout = WAIT_S
    read, locate, ask = (
        tool_use("read_skill", {"name": "pdf"}),
        tool_use("locate"),
        tool_use("read_skill", {"name": "pdf"}),
    )
    async with aiohttp.ClientSession() as http:
        try:
            await served.start(http)
            url = f"{served.url}/gateway"
            async with (
                http.ws_connect(url) as on_model,
                http.ws_connect(url) as on_tool,
                http.ws_connect(url) as on_ask,
            ):
                fake.queue(tool_reply(read), Reply(text="one two three", hold_after_deltas=1))
                await on_model.send_json({"type": "chat.send", "id": "m", "content": "read", "agentId": "reader"})
                model_session = (await until(on_model, "chat.tool.result"))[0]["sessionId"]
                await fake.wait_held()
                fake.queue(tool_reply(locate))
                send = {"type": "chat.send", "id": "t", "content": "where?", "agentId": "client", "tools": [LOCATE]}
                await on_tool.send_json(send)
                tool_session = (await until(on_tool, "chat.tool.call"))[0]["sessionId"]
                fake.queue(tool_reply(ask))
                await on_ask.send_json({"type": "chat.send", "id": "a", "content": "read", "agentId": "careful"})
                ask_session = (await until(on_ask, "chat.tool.approval"))[0]["sessionId"]
                db = served.db()
                open_calls = db.execute("select name, status from tool_calls order by created_at").fetchall()
                db.close()
                assert sorted(open_calls) == [("locate", "running"), ("read_skill", "done"), ("read_skill", "pending")]
                assert served.proc is not None
                served.proc.kill()
                await served.proc.wait()

            sent_before = len(fake.requests)
            await served.start(http)
            async with http.ws_connect(url) as ws:
                await ws.send_json({"type": "session.pending"})
                pending = await ws.receive_json(timeout=WAIT_S)
                assert pending["approvals"] == []  # the dead turn's approval can no longer be answered
                for session_id in (model_session, tool_session, ask_session):
                    fake.queue(Reply(text="fine"))
                    await ws.send_json(
                        {"type": "chat.send", "id": session_id, "content": "again", "sessionId": session_id}
                    )
                    frames = await _until_end(ws)
                    assert frames[-1]["type"] == "chat.stream.end", frames[-1]
                    assert not [f for f in frames if f["type"].startswith("chat.tool")]  # nothing ran again
                assert fake.refusals == []
                assert len(fake.requests) == sent_before + 3
                results = {
                    b["tool_use_id"]: b
                    for r in fake.requests[sent_before:]
                    for m in r.body["messages"]
                    for b in m["content"]
                    if b.get("type") == "tool_result"
                }
                assert results[locate["id"]]["is_error"] is True
                assert results[locate["id"]]["content"].startswith("Interrupted; outcome unknown")
                assert results[ask["id"]]["content"] == "Not run: the turn ended before this call was approved."
                assert results[read["id"]]["content"] == "body" and "is_error" not in results[read["id"]]

                # SIGTERM while a turn waits on an approval: its call is interrupted and it gets its end frame.
                fake.queue(tool_reply(tool_use("read_skill", {"name": "pdf"})))
                await ws.send_json({"type": "chat.send", "id": "s", "content": "once more", "sessionId": ask_session})
                await until(ws, "chat.tool.approval")
                assert served.proc is not None
                served.proc.send_signal(signal.SIGTERM)
                rest = await _until_end(ws)
                assert next(f for f in rest if f["type"] == "chat.tool.result")["status"] == "interrupted"
                assert (rest[-1]["type"], rest[-1]["status"]) == ("chat.stream.end", "interrupted")
                assert (await ws.receive(timeout=WAIT_S)).type == WSMsgType.CLOSE
            assert await served.proc.wait() == 0
        finally:
            await served.stop()
    db = served.db()
    assert db.execute("select count(*) from messages where status = 'streaming'").fetchone() == (0,)
    statuses = db.execute("select status, count(*) from tool_calls group by status order by status").fetchall()
    assert statuses == [("done", 1), ("interrupted", 3)]
    assert db.execute("pragma integrity_check").fetchone() == ("ok",)


async def _until_end(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1]["type"] not in ("chat.stream.end", "error"):
        frames.append(await ws.receive_json(timeout=WAIT_S))
    return frames
