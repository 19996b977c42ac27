"""The real `agentspace serve` killed (kill -9) while the model writes a session's summary: the session is exactly as
it was, and is compacted fine after a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests.fake_anthropic import FakeAnthropic, Reply
from tests.test_crash import WAIT_S, Served

ROWS = "select id, seq, role, kind, compacted_by, status, text from messages order by seq"


async def _ask(ws: aiohttp.ClientWebSocketResponse, frame: dict[str, Any]) -> dict[str, Any]:
    await ws.send_json(frame)
    while True:
        answer: dict[str, Any] = await ws.receive_json(timeout=WAIT_S)
        if answer.get("id") == frame.get("id") and answer["type"] in (
            "chat.stream.end", "error", "session.compacted", "context.inspection"
        ):  # fmt: skip
            return answer


async def test_kill_9_mid_summary_leaves_the_session_as_it_was(tmp_path: Path, fake: FakeAnthropic) -> None:
    home = tmp_path / "home"
    (home / "agents" / "small").mkdir(parents=True)
    (home / "agents" / "small" / "agent.toml").write_text("[context]\nkeep_turns = 1\nauto_compact = false\n")
    served = Served(home, fake)
    fake.wait_timeout = WAIT_S
    async with aiohttp.ClientSession() as http:
        try:
            await served.start(http)
            async with http.ws_connect(f"{served.url}/gateway") as ws:
                first = await _ask(ws, {"type": "chat.send", "id": "t0", "content": "First.", "agentId": "small"})
                session_id = first["sessionId"]
                for n, text in enumerate(("Second.", "Third."), start=1):
                    await _ask(ws, {"type": "chat.send", "id": f"t{n}", "content": text, "sessionId": session_id})
                db = served.db()
                before = db.execute(ROWS).fetchall()
                db.close()
                fake.queue(Reply(hold_after_deltas=2))
                await ws.send_json({"type": "session.compact", "id": "c1", "sessionId": session_id})
                await fake.wait_held()  # the summary is half written
                assert served.proc is not None
                served.proc.kill()
                await served.proc.wait()
            db = served.db()
            assert db.execute(ROWS).fetchall() == before
            assert db.execute("select count(*) from usage_records where purpose = 'compaction'").fetchone() == (0,)
            db.close()

            fake.release()
            await served.start(http)
            async with http.ws_connect(f"{served.url}/gateway") as ws:
                done = await _ask(ws, {"type": "session.compact", "id": "c2", "sessionId": session_id})
                assert done["type"] == "session.compacted" and done["compactedMessages"] == 4, done
                reply = await _ask(ws, {"type": "chat.send", "id": "t9", "content": "Fourth.", "sessionId": session_id})
                assert reply["type"] == "chat.stream.end"
        finally:
            await served.stop()
    db = served.db()
    assert db.execute("pragma integrity_check").fetchone() == ("ok",)
    kinds = db.execute("select kind, compacted_by is not null from messages order by seq").fetchall()
    assert kinds == [("message", 1)] * 4 + [("message", 0)] * 2 + [("summary", 0)] + [("message", 0)] * 2
