"""Sessions that outlive their window: compaction by request (`session.compact`) and before a turn (automatic),
what is sent afterwards, what SQL keeps, and compactions that fail leaving the session as it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp import ClientWebSocketResponse

from gateway.context.compaction import SUMMARY_PREAMBLE
from gateway.settings import Settings
from tests.conftest import chat, collect, request, send
from tests.fake_anthropic import COMPACTION_REQUEST, FakeAnthropic, Reply
from tests.fake_cache import PromptCache
from tests.sql import sql_exec, sql_rows

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa ".split()


def make_agent(home: Path, name: str = "small", context: str = "window = 3000\nkeep_turns = 1\n") -> str:
    folder = home / "agents" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "agent.toml").write_text(f"[context]\n{context}", encoding="utf-8")
    return name


def long_message(n: int) -> str:
    """About 150 tokens, starting with its number so a summary's snippets say which turns it covers."""
    return f"Turn {n}: " + " ".join(WORDS[(n + i) % len(WORDS)] for i in range(110))


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


async def turn(ws: ClientWebSocketResponse, content: str, **fields: Any) -> list[dict[str, Any]]:
    frames = await chat(ws, content, **fields)
    assert frames[-1]["type"] == "chat.stream.end", frames[-1]
    return frames


async def messages(settings: Settings, session_id: str) -> list[dict[str, Any]]:
    return await sql_rows(
        settings.db_url,
        "SELECT id, seq, role, kind, compacted_by, text, status FROM messages WHERE session_id = :s ORDER BY seq",
        s=session_id,
    )


def summarisation_requests(fake: FakeAnthropic) -> list[dict[str, Any]]:
    found = []
    for recorded in fake.requests:
        last = (recorded.body.get("messages") or [{}])[-1]
        blocks = last.get("content") if isinstance(last.get("content"), list) else []
        if any(str(b.get("text", "")).startswith(COMPACTION_REQUEST) for b in blocks):
            found.append(recorded.body)
    return found


async def test_a_session_far_past_a_small_window_keeps_working(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    agent = make_agent(settings.home)
    first = await turn(ws, long_message(0), agentId=agent)
    session_id = first[0]["sessionId"]
    compactions: list[dict[str, Any]] = []
    for n in range(1, 30):
        frames = await turn(ws, long_message(n), sessionId=session_id)
        found = [f for f in frames if f["type"] == "session.compacted"]
        if found:
            # Said before the turn's own request starts, with what it did and cost.
            assert [f["type"] for f in frames].index("session.compacted") < [f["type"] for f in frames].index(
                "chat.stream.start"
            )
        compactions += found
    # 30 turns of ~320 tokens in a 3,000-token window: it was compacted again and again, and every turn completed.
    assert len(compactions) >= 3
    for frame in compactions:
        assert frame["trigger"] == "auto" and "3,000-token window" in frame["reason"]
        assert frame["tokensAfter"] < frame["tokensBefore"]
        assert frame["cost"]["priced"] is True and frame["cost"]["totalCost"] > 0
        assert frame["usage"]["outputTokens"] > 0

    # SQL keeps every message: 30 user turns, 30 replies, and the summaries; the older ones are marked, not gone.
    rows = await messages(settings, session_id)
    users = [r for r in rows if r["role"] == "user"]
    assert [r["text"] for r in users] == [long_message(n) for n in range(30)]
    assert sum(1 for r in rows if r["role"] == "assistant" and r["kind"] == "message") == 30
    summaries = [r for r in rows if r["kind"] == "summary"]
    assert len(summaries) == len(compactions)
    in_force = [r for r in summaries if r["compacted_by"] is None]
    assert len(in_force) == 1 and in_force[0]["id"] == compactions[-1]["summaryMessageId"]
    assert all(r["compacted_by"] is not None for r in summaries[:-1])  # each summary is summarised by the next
    assert {r["compacted_by"] for r in rows if r["compacted_by"]} == {r["id"] for r in summaries}
    assert users[0]["compacted_by"] == summaries[0]["id"]

    # Each compaction's request is a usage row of its own, priced, with its purpose.
    usage = await sql_rows(
        settings.db_url,
        "SELECT purpose, status, total_cost, message_id FROM usage_records WHERE session_id = :s ORDER BY created_at",
        s=session_id,
    )
    compaction_rows = [u for u in usage if u["purpose"] == "compaction"]
    assert [u["message_id"] for u in compaction_rows] == [r["id"] for r in summaries]
    assert all(u["status"] == "complete" and u["total_cost"] > 0 for u in compaction_rows)
    assert sum(1 for u in usage if u["purpose"] == "chat") == 30
    assert len(summarisation_requests(fake)) == len(compactions)

    # What is sent now: the summary in force (as two turns), then the turns after it.
    sent = fake.requests[-1].body["messages"]
    assert sent[0] == {"role": "user", "content": [{"type": "text", "text": SUMMARY_PREAMBLE}]}
    assert sent[1]["role"] == "assistant"
    assert [b["text"] for b in sent[1]["content"]] == [in_force[0]["text"]]
    assert in_force[0]["text"].startswith("Summary of ")
    assert long_message(0)[:40] not in compact(sent[2:])  # the first turn is only in the summary now
    assert sent[-1]["content"][-1]["text"] == long_message(29)

    # The inspector's sections are that request, byte for byte.
    draft = "And one more."
    frame = await request(ws, {"type": "context.inspect", "sessionId": session_id, "content": draft})
    await turn(ws, draft, sessionId=session_id)
    body = fake.requests[-1].body
    sections = {s["name"]: s for s in frame["sections"]}
    assert sections["summary"]["content"] + sections["history"]["content"] == body["messages"]
    assert sections["summary"]["byteCount"] + sections["history"]["byteCount"] == len(compact(body["messages"]))
    assert sections["summary"]["messageId"] == in_force[0]["id"]
    assert sections["summary"]["compactedMessages"] == sum(1 for r in rows if r["compacted_by"])
    assert sections["summary"]["tokenEstimate"] > 0 and sections["summary"]["costEstimate"] > 0
    assert [b["text"] for b in body["system"]] == [sections["system_prompt"]["content"]]
    assert sections["tools"]["content"] == body["tools"]
    assert frame["totals"]["byteCount"] == sum(s["byteCount"] for s in frame["sections"])
    assert frame["contextWindow"] == 3000 and frame["windowShare"] < 0.8


async def test_compact_on_request(ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings) -> None:
    agent = make_agent(settings.home, context="keep_turns = 1\nauto_compact = false\n")
    session_id = (await turn(ws, "First question.", agentId=agent))[0]["sessionId"]
    for text in ("Second question.", "Third question.", "Fourth question."):
        await turn(ws, text, sessionId=session_id)
    before = await messages(settings, session_id)

    # The preview says what would happen, and changes nothing.
    preview = await request(ws, {"type": "context.inspect", "sessionId": session_id, "compact": True})
    plan = preview["compaction"]
    assert plan["possible"] is True and plan["dueNow"] is None
    assert (plan["compactedMessages"], plan["keptMessages"]) == (6, 2)
    assert plan["request"]["tokenEstimate"] > 0 and plan["request"]["worstCaseCost"] > 0
    after_sections = {s["name"]: s for s in plan["after"]["sections"]}
    assert after_sections["summary"]["messageId"] == "(preview)"
    assert [t["content"][-1]["text"] for t in after_sections["history"]["content"]][:1] == ["Fourth question."]
    assert await messages(settings, session_id) == before
    requests_before = len(fake.requests)
    assert len(fake.requests) == requests_before

    answer = await request(ws, {"type": "session.compact", "id": "c1", "sessionId": session_id})
    assert answer["type"] == "session.compacted" and answer["id"] == "c1" and answer["trigger"] == "manual"
    assert answer["compactedMessages"] == 6 and answer["keptMessages"] == 2
    assert answer["summary"].startswith("Summary of 7 messages: First question. | Second question. | Third")
    assert answer["tokensAfter"] < answer["tokensBefore"]
    assert answer["throughSeq"] == 5

    history = await request(ws, {"type": "session.history", "sessionId": session_id})
    shown = [(m["role"], m["kind"], m["compacted"]) for m in history["messages"]]
    assert shown == [("user", "message", True), ("assistant", "message", True)] * 3 + [
        ("user", "message", False),
        ("assistant", "message", False),
        ("assistant", "summary", False),
    ]
    assert history["messages"][-1]["text"] == answer["summary"]
    assert history["messages"][0]["compactedBy"] == answer["summaryMessageId"]

    # The next turn sends the summary, then the kept turn, then the new message.
    await turn(ws, "Fifth question.", sessionId=session_id)
    sent = fake.requests[-1].body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user", "assistant", "user"]
    assert sent[1]["content"][0]["text"] == answer["summary"]
    assert sent[2]["content"][-1]["text"] == "Fourth question."

    # A second compaction summarises the first summary with the rest.
    again = await request(ws, {"type": "session.compact", "sessionId": session_id, "instructions": "Be brief."})
    assert again["type"] == "session.compacted", again
    assert again["summary"].startswith("Summary of ") and "[Summary of 7 messages" in again["summary"]
    assert "Also: Be brief." in summarisation_requests(fake)[-1]["messages"][-1]["content"][-1]["text"]
    rows = await messages(settings, session_id)
    assert [r["kind"] for r in rows if r["compacted_by"] is None] == ["message", "message", "summary"]

    nothing = await request(ws, {"type": "session.compact", "sessionId": session_id})
    assert nothing["type"] == "error" and nothing["code"] == "NOTHING_TO_COMPACT"
    missing = await request(ws, {"type": "session.compact", "sessionId": "nope"})
    assert missing["code"] == "SESSION_NOT_FOUND"


async def test_window_refusal_says_how_much_is_over_and_how_to_compact(
    ws: ClientWebSocketResponse, settings: Settings
) -> None:
    agent = make_agent(settings.home, context="window = 1000\nauto_compact = false\n")
    session_id = (await turn(ws, long_message(0), agentId=agent))[0]["sessionId"]
    for n in range(1, 4):
        frames = await chat(ws, long_message(n), sessionId=session_id)
        if frames[-1]["type"] == "error":
            break
    error = frames[-1]
    assert error["code"] == "CONTEXT_TOO_LARGE" and error["contextWindow"] == 1000
    assert error["overBy"] == error["tokenEstimate"] - 1000 > 0
    assert error["message"] == (
        f"the assembled context is about {error['tokenEstimate']:,} tokens; claude-sonnet-5-5's window here is 1,000"
        f" ({error['overBy']:,} over). Compact the session (session.compact, or /compact in agentspace chat) or turn"
        " automatic compaction on (auto_compact = true under [context] in agent.toml)."
    )
    # Compacting by hand makes room again.
    done = await request(ws, {"type": "session.compact", "sessionId": session_id, "keepTurns": 0})
    assert done["type"] == "session.compacted"
    await turn(ws, "Short now.", sessionId=session_id)


async def test_the_window_is_checked_on_the_calibrated_estimate_and_a_request_exactly_at_it_is_sent(
    ws: ClientWebSocketResponse, settings: Settings
) -> None:
    """The send is judged on the estimate calibrated by what Anthropic has reported for the model (the number the
    inspector shows, not our raw count), and a request of exactly the window's size still goes."""
    # Anthropic has counted 2 tokens for every 1 of ours for this model.
    await sql_exec(
        settings.db_url,
        "INSERT INTO token_calibration (model, samples, estimated_tokens, reported_tokens, updated_at, output_samples,"
        " output_estimated_tokens, output_reported_tokens) VALUES (:m, 5, 1000, 2000, '2026-01-01', 0, 0, 0)",
        m="claude-sonnet-5-5",
    )
    agent = make_agent(settings.home, "calibrated", context="window = 100000\nauto_compact = false\n")
    session_id = (await turn(ws, "First question.", agentId=agent))[0]["sessionId"]
    draft = " ".join(long_message(n) for n in range(1, 6))  # calibrated, well over the smallest window (1,000)
    seen = await request(ws, {"type": "context.inspect", "sessionId": session_id, "content": draft})
    best = seen["calibratedTokenEstimate"]
    assert best is not None and best > seen["totals"]["tokenEstimate"] + seen["requestOverheadTokens"] + 50

    make_agent(settings.home, agent, context=f"window = {best - 1}\nauto_compact = false\n")
    refused = (await chat(ws, draft, sessionId=session_id))[-1]
    assert refused["code"] == "CONTEXT_TOO_LARGE", refused
    assert (refused["tokenEstimate"], refused["contextWindow"], refused["overBy"]) == (best, best - 1, 1)

    make_agent(settings.home, agent, context=f"window = {best}\nauto_compact = false\n")
    await turn(ws, draft, sessionId=session_id)


async def test_with_automatic_compaction_on_a_message_too_large_alone_is_refused_saying_so(
    ws: ClientWebSocketResponse, settings: Settings
) -> None:
    """Compaction cannot shrink the newest message: the refusal says to shorten it, not to turn compaction on."""
    agent = make_agent(settings.home, "tiny", context="window = 1000\nauto_compact = true\n")
    refused = (await chat(ws, " ".join(long_message(n) for n in range(10)), agentId=agent))[-1]
    assert refused["code"] == "CONTEXT_TOO_LARGE", refused
    assert refused["message"] == (
        f"the assembled context is about {refused['tokenEstimate']:,} tokens; claude-sonnet-5-5's window here is 1,000"
        f" ({refused['overBy']:,} over). Compaction could not bring it under: the newest turn alone is too large;"
        " shorten it."
    )


async def _session_ready(ws: ClientWebSocketResponse, settings: Settings) -> str:
    agent = make_agent(settings.home, context="keep_turns = 1\nauto_compact = false\n")
    session_id = (await turn(ws, "First question.", agentId=agent))[0]["sessionId"]
    for text in ("Second question.", "Third question."):
        await turn(ws, text, sessionId=session_id)
    return str(session_id)


async def test_a_failed_compaction_changes_nothing(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    session_id = await _session_ready(ws, settings)
    before = await messages(settings, session_id)
    # An error event after some of the summary was written: failed, billed, and nothing of it stored.
    fake.queue(Reply(error_after_deltas=2, error_type="api_error"))
    failed = await request(ws, {"type": "session.compact", "sessionId": session_id})
    assert failed["type"] == "error" and failed["code"] == "UPSTREAM_ERROR"
    assert await messages(settings, session_id) == before
    rows = await sql_rows(settings.db_url, "SELECT status FROM usage_records WHERE purpose = 'compaction'")
    assert [r["status"] for r in rows] == ["failed"]
    # Refused before any usage: no row.
    fake.queue(Reply(status=400))
    refused = await request(ws, {"type": "session.compact", "sessionId": session_id})
    assert refused["code"] == "UPSTREAM_BAD_REQUEST"
    assert await messages(settings, session_id) == before
    # An answer with no text: nothing to store.
    fake.queue(Reply(text="   "))
    empty = await request(ws, {"type": "session.compact", "sessionId": session_id})
    assert empty["code"] == "COMPACTION_FAILED"
    assert await messages(settings, session_id) == before
    # The session goes on as it was, and can still be compacted.
    await turn(ws, "Fourth question.", sessionId=session_id)
    assert (await request(ws, {"type": "session.compact", "sessionId": session_id}))["type"] == "session.compacted"


async def test_a_cancelled_compaction_changes_nothing(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    session_id = await _session_ready(ws, settings)
    before = await messages(settings, session_id)
    fake.queue(Reply(hold_after_deltas=1))
    await send(ws, {"type": "session.compact", "id": "c1", "sessionId": session_id})
    await fake.wait_held()
    busy = await request(ws, {"type": "chat.send", "id": "t2", "content": "meanwhile", "sessionId": session_id})
    assert busy["code"] == "STREAM_IN_PROGRESS"
    await send(ws, {"type": "chat.cancel", "id": "x1", "sessionId": session_id})
    frames = await collect(ws, until=("chat.cancelled",))
    assert [(f["type"], f.get("code"), f["id"]) for f in frames] == [
        ("error", "CANCELLED", "c1"),
        ("chat.cancelled", None, "x1"),
    ]
    assert await fake.wait_stream_closed() is True  # the upstream stopped writing the summary
    assert await messages(settings, session_id) == before
    rows = await sql_rows(settings.db_url, "SELECT status FROM usage_records WHERE purpose = 'compaction'")
    assert [r["status"] for r in rows] == ["cancelled"]
    await turn(ws, "Fourth question.", sessionId=session_id)


async def test_compaction_frames_are_validated(ws: ClientWebSocketResponse) -> None:
    bad = await request(ws, {"type": "session.compact", "sessionId": "s", "keepTurns": -1})
    assert (bad["code"], bad["field"]) == ("INVALID_MESSAGE", "keepTurns")
    bad = await request(ws, {"type": "session.compact", "sessionId": "s", "instructions": "x" * 2001})
    assert (bad["code"], bad["field"]) == ("INVALID_MESSAGE", "instructions")
    bad = await request(ws, {"type": "context.inspect", "sessionId": "s", "compact": "yes"})
    assert (bad["code"], bad["field"]) == ("INVALID_MESSAGE", "compact")


async def test_a_compaction_costs_one_cache_write(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    """With the fake's prompt cache (breakpoints, prefixes, 20-block lookback): the summarisation request reads the
    session's cached prefix; the first request after it writes the summary once; every later request reads all that
    the one before it wrote, so no turn after a compaction pays for the summary again."""
    fake.prompt_cache = PromptCache()
    agent = make_agent(settings.home)
    session_id = (await turn(ws, long_message(0), agentId=agent))[0]["sessionId"]
    for n in range(1, 20):
        await turn(ws, long_message(n), sessionId=session_id)
    rows = await sql_rows(
        settings.db_url,
        "SELECT purpose, input_tokens, cache_read_tokens, cache_write_5m_tokens FROM usage_records"
        " WHERE session_id = :s ORDER BY created_at",
        s=session_id,
    )
    kinds = [r["purpose"] for r in rows]
    assert kinds.count("compaction") >= 2
    for i in range(2, len(rows)):
        row, before = rows[i], rows[i - 1]
        if row["purpose"] == "compaction":
            # The whole history it summarises was cached by the turn before: read, nothing written.
            assert row["cache_read_tokens"] == before["cache_read_tokens"] + before["cache_write_5m_tokens"]
            assert row["cache_write_5m_tokens"] == 0
        elif before["purpose"] == "compaction":
            # Tools and system are still cached; the summary (and the turn kept after it) is written, once.
            assert 0 < row["cache_read_tokens"] < 200 < row["cache_write_5m_tokens"]
        else:
            # Everything the previous request wrote is read back; only the newest turn is written.
            assert row["cache_read_tokens"] == before["cache_read_tokens"] + before["cache_write_5m_tokens"]
            assert row["cache_write_5m_tokens"] < 400
