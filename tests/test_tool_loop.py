"""The tool loop inside one chat.send, through the real SDK against the strict fake upstream (which refuses a
tool_use without its tool_result, a result without its call, a thinking block replayed with the wrong signature):
two steps, parallel calls, the frames frame by frame, and every request's usage row summing to the end frame."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientWebSocketResponse

from gateway.settings import Settings
from tests.conftest import Gateway, chat, request
from tests.fake_anthropic import FakeAnthropic, Reply, tool_reply, tool_use
from tests.sql import sql_rows
from tests.test_metrics import scrape, value

PDF_BODY = "# PDF skill\n\nUse pdftotext first."


def make_agent(settings: Settings, name: str = "helper", toml: str = "") -> Path:
    root = settings.agents_dir / name
    (root / "skills" / "pdf").mkdir(parents=True)
    (root / "skills" / "pdf" / "SKILL.md").write_text(f"---\nname: pdf\ndescription: Read PDFs.\n---\n\n{PDF_BODY}\n")
    (root / "skills" / "pdf" / "notes.txt").write_text("page 2 is a table")
    if toml:
        (root / "agent.toml").write_text(toml)
    return root


def kinds(frames: list[dict[str, Any]]) -> list[str]:
    """Frame types in order, runs of deltas collapsed into one."""
    out: list[str] = []
    for frame in frames:
        if frame["type"] in ("chat.stream.delta", "chat.stream.thinking") and out and out[-1] == frame["type"]:
            continue
        out.append(frame["type"])
    return out


async def test_two_step_loop_frames_history_and_usage(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings, db_url: str
) -> None:
    make_agent(settings)
    call = tool_use("read_skill", {"name": "pdf"})
    fake.queue(
        tool_reply(call, text="Let me read the skill.", input_tokens=100, output_tokens=20),
        Reply(text="Use pdftotext.", input_tokens=150, output_tokens=10),
    )
    frames = await chat(ws, "How do I read a PDF?", agentId="helper")
    assert kinds(frames) == [
        "session.created",
        "chat.stream.start",
        "chat.stream.thinking",
        "chat.stream.delta",
        "chat.step.end",
        "chat.tool.call",
        "chat.tool.result",
        "chat.stream.thinking",
        "chat.stream.delta",
        "chat.stream.end",
    ]
    by_type = {f["type"]: f for f in frames}
    session_id = frames[0]["sessionId"]
    step_end, call_frame, result = by_type["chat.step.end"], by_type["chat.tool.call"], by_type["chat.tool.result"]
    assert step_end["step"] == 1 and step_end["stopReason"] == "tool_use" and step_end["toolCalls"] == 1
    assert step_end["usage"]["inputTokens"] == 100 and step_end["messageId"] == frames[1]["messageId"]
    assert call_frame["toolUseId"] == call["id"] and call_frame["input"] == {"name": "pdf"}
    assert (call_frame["name"], call_frame["executor"], call_frame["policy"], call_frame["step"]) == (
        "read_skill",
        "builtin",
        "allow",
        1,
    )
    assert result["status"] == "done" and result["isError"] is False and result["content"] == PDF_BODY
    assert result["durationMs"] >= 0 and result["truncated"] is False
    end = frames[-1]
    assert (end["status"], end["stopReason"], end["requests"], end["steps"], end["toolCalls"]) == (
        "complete",
        "end_turn",
        2,
        2,
        1,
    )
    assert end["boundHit"] is None
    assert end["usage"]["inputTokens"] == 250 and end["usage"]["outputTokens"] == 30
    # The second request carries the call and its result, paired, after the thinking block it was signed with.
    second = fake.requests[-1].body["messages"]
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert [b["type"] for b in second[1]["content"]] == ["thinking", "text", "tool_use"]
    assert second[2]["content"][0]["tool_use_id"] == call["id"]
    assert second[2]["content"][0]["content"] == PDF_BODY
    assert fake.refusals == []

    # Stored: one message per request and the results between them; one usage row per request, numbered.
    messages = await sql_rows(
        db_url, "select role, status, stop_reason from messages where session_id = :s order by seq", s=session_id
    )
    assert [(m["role"], m["status"], m["stop_reason"]) for m in messages] == [
        ("user", "complete", None),
        ("assistant", "complete", "tool_use"),
        ("user", "complete", None),
        ("assistant", "complete", "end_turn"),
    ]
    usage = await sql_rows(
        db_url,
        "select step, input_tokens, output_tokens, total_cost from usage_records where session_id = :s order by step",
        s=session_id,
    )
    assert [(u["step"], u["input_tokens"], u["output_tokens"]) for u in usage] == [(1, 100, 20), (2, 150, 10)]
    assert sum(u["total_cost"] for u in usage) == round(end["cost"]["totalCost"] * 1e9)
    calls = await sql_rows(db_url, "select tool_use_id, name, status, executor, step, is_error from tool_calls")
    assert [(c["tool_use_id"], c["name"], c["status"], c["executor"], c["step"]) for c in calls] == [
        (call["id"], "read_skill", "done", "builtin", 1)
    ]
    session = await sql_rows(db_url, "select message_count from sessions where id = :s", s=session_id)
    assert session[0]["message_count"] == 4

    # The session goes on: the whole loop replays, paired, and the strict fake takes it.
    more = await chat(ws, "Thanks!", sessionId=session_id)
    assert more[-1]["type"] == "chat.stream.end", more[-1]
    assert [m["role"] for m in fake.requests[-1].body["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    history = await request(ws, {"type": "session.history", "sessionId": session_id})
    assert [c["toolUseId"] for c in history["toolCalls"]] == [call["id"]]
    assert history["pending"] == []


async def test_parallel_calls_answered_in_one_message_in_call_order(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings)
    first, second = (
        tool_use("read_skill_file", {"skill": "pdf", "path": "notes.txt"}),
        tool_use("read_skill", {"name": "pdf"}),
    )
    fake.queue(tool_reply(first, second), Reply(text="ok"))
    frames = await chat(ws, "both", agentId="helper")
    assert [f["toolUseId"] for f in frames if f["type"] == "chat.tool.call"] == [first["id"], second["id"]]
    results = fake.requests[-1].body["messages"][-1]["content"]
    assert [(b["type"], b["tool_use_id"]) for b in results] == [
        ("tool_result", first["id"]),
        ("tool_result", second["id"]),
    ]
    assert results[0]["content"] == "page 2 is a table"
    assert frames[-1]["toolCalls"] == 2


async def test_skill_readers_refuse_paths_out_of_the_skill(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    root = make_agent(settings)
    (root / "SYSTEM.md").write_text("secret system prompt")
    attempts = [
        tool_use("read_skill_file", {"skill": "pdf", "path": "../../SYSTEM.md"}),
        tool_use("read_skill_file", {"skill": "pdf", "path": "/etc/passwd"}),
        tool_use("read_skill", {"name": "nope"}),
    ]
    fake.queue(tool_reply(*attempts), Reply(text="ok"))
    frames = await chat(ws, "try", agentId="helper")
    results = {f["toolUseId"]: f for f in frames if f["type"] == "chat.tool.result"}
    assert [results[a["id"]]["isError"] for a in attempts] == [True, True, True]
    assert "secret" not in json.dumps(fake.requests[-1].body["messages"][-1])
    assert "no skill named 'nope'" in results[attempts[2]["id"]]["content"]


async def test_request_bound_refuses_open_calls_and_lets_the_model_sum_up(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings, toml="[tools]\nmax_requests = 3\n")
    fake.queue(
        tool_reply(tool_use("read_skill", {"name": "pdf"})),
        tool_reply(tool_use("read_skill_file", {"skill": "pdf", "path": "notes.txt"})),
        Reply(text="Here is what I found."),
    )
    frames = await chat(ws, "dig", agentId="helper")
    end = frames[-1]
    assert (end["requests"], end["steps"], end["boundHit"], end["stopReason"]) == (3, 3, "requests", "end_turn")
    results = [f for f in frames if f["type"] == "chat.tool.result"]
    assert [r["status"] for r in results] == ["done", "error"]
    assert "limit of 3 model requests" in results[1]["content"]
    bodies = [r.body for r in fake.requests]
    assert "tool_choice" not in bodies[0] and "tool_choice" not in bodies[1]
    assert bodies[2]["tool_choice"] == {"type": "none"} and bodies[2]["tools"] == bodies[0]["tools"]
    assert fake.refusals == []


async def test_tool_call_bound_runs_the_first_calls_and_refuses_the_rest(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings, toml="[tools]\nmax_tool_calls = 2\n")
    calls = [tool_use("read_skill_file", {"skill": "pdf", "path": f"n{i}.txt"}) for i in range(3)]
    fake.queue(tool_reply(*calls), Reply(text="summary"))
    frames = await chat(ws, "three", agentId="helper")
    results = [f for f in frames if f["type"] == "chat.tool.result"]
    ran = [r["content"] for r in results if r["toolUseId"] != calls[2]["id"]]
    assert len(ran) == 2 and all("does not exist" in text for text in ran)  # they ran: there is no such file
    refused = next(r for r in results if r["toolUseId"] == calls[2]["id"])
    assert "limit of 2 tool calls" in refused["content"]
    assert frames[-1]["boundHit"] == "tool_calls" and frames[-1]["toolCalls"] == 3
    assert fake.requests[-1].body["tool_choice"] == {"type": "none"}


async def test_the_same_call_a_third_time_is_refused_and_the_model_goes_on(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings)
    same = {"name": "pdf"}
    fake.queue(*(tool_reply(tool_use("read_skill", same)) for _ in range(3)), Reply(text="changing approach"))
    frames = await chat(ws, "loop", agentId="helper")
    results = [f for f in frames if f["type"] == "chat.tool.result"]
    assert [r["status"] for r in results] == ["done", "done", "error"]
    assert "already called with exactly this input 2 times" in results[2]["content"]
    assert frames[-1]["boundHit"] is None and frames[-1]["requests"] == 4
    assert "tool_choice" not in fake.requests[-1].body


async def test_pause_turn_is_continued_and_server_tools_are_counted(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings, db_url: str
) -> None:
    search = {"type": "server_tool_use", "id": "srvtoolu_01", "name": "web_search", "input": {"query": "wal"}}
    found = {
        "type": "web_search_tool_result",
        "tool_use_id": "srvtoolu_01",
        "content": [
            {
                "type": "web_search_result",
                "url": "https://sqlite.org/wal.html",
                "title": "WAL",
                "encrypted_content": "x",
            }
        ],
    }
    fake.queue(
        Reply(
            text="Searching.",
            blocks=[search, found],
            stop_reason="pause_turn",
            server_tool_use={"web_search_requests": 1},
        ),
        Reply(text="WAL is a journal mode."),
    )
    frames = await chat(ws, "what is WAL?")
    end = frames[-1]
    assert (end["stopReason"], end["requests"], end["steps"], end["toolCalls"]) == ("end_turn", 2, 2, 0)
    steps = [f for f in frames if f["type"] == "chat.step.end"]
    assert [s["stopReason"] for s in steps] == ["pause_turn"]
    # Continuing sends the paused reply back as it is: the request ends with that assistant turn.
    last = fake.requests[-1].body["messages"][-1]
    assert last["role"] == "assistant" and [b["type"] for b in last["content"]][-2:] == [
        "server_tool_use",
        "web_search_tool_result",
    ]
    rows = await sql_rows(db_url, "select * from usage_records order by step")
    assert [(r["step"], r["web_search_requests"], r["server_tool_cost"]) for r in rows] == [
        (1, 1, 10_000_000),
        (2, 0, 0),
    ]
    # A search costs $0.01 ($10 per 1,000) on top of the tokens, in the row's total and in the turn's.
    assert rows[0]["total_cost"] == rows[0]["input_cost"] + rows[0]["output_cost"] + 10_000_000
    assert end["cost"]["serverToolCost"] == 0.01
    assert round(end["cost"]["totalCost"] * 1e9) == sum(r["total_cost"] for r in rows)
    audit = await sql_rows(
        db_url,
        "SELECT COUNT(*) AS wrong FROM usage_records WHERE total_cost <> input_tokens * rate_input"
        " + output_tokens * rate_output + cache_write_5m_tokens * rate_cache_write_5m"
        " + cache_write_1h_tokens * rate_cache_write_1h + cache_read_tokens * rate_cache_read"
        " + COALESCE(server_tool_cost, 0)",
    )
    assert audit == [{"wrong": 0}]  # docs/SQL.md's audit query, server tools included
    report = await request(ws, {"type": "usage.query", "sessionId": frames[0]["sessionId"]})
    assert report["grandTotal"]["serverToolCost"] == 0.01 and report["grandTotal"]["savedCost"] == 0.0
    # The next turn replays both replies as one assistant turn.
    more = await chat(ws, "thanks", sessionId=frames[0]["sessionId"])
    assert more[-1]["type"] == "chat.stream.end"
    assert [m["role"] for m in fake.requests[-1].body["messages"]] == ["user", "assistant", "user"]


async def test_a_finished_reply_with_a_search_is_replayed_with_its_results(
    ws: ClientWebSocketResponse, fake: FakeAnthropic
) -> None:
    """A reply that searched the web in its one request: the next turn sends the search and its results back, so the
    model still has what it found."""
    search = {"type": "server_tool_use", "id": "srvtoolu_02", "name": "web_search", "input": {"query": "wal"}}
    found = {
        "type": "web_search_tool_result",
        "tool_use_id": "srvtoolu_02",
        "content": [{"type": "web_search_result", "url": "https://sqlite.org/wal.html", "title": "WAL"}],
    }
    fake.queue(Reply(text="WAL is a journal mode.", blocks=[search, found], server_tool_use={"web_search_requests": 1}))
    first = await chat(ws, "what is WAL?")
    assert (first[-1]["status"], first[-1]["stopReason"]) == ("complete", "end_turn")
    fake.queue(Reply(text="You are welcome."))
    more = await chat(ws, "thanks", sessionId=first[-1]["sessionId"])
    assert more[-1]["type"] == "chat.stream.end"
    replayed = fake.requests[-1].body["messages"][1]
    assert replayed["role"] == "assistant"
    assert [b["type"] for b in replayed["content"]] == ["thinking", "text", "server_tool_use", "web_search_tool_result"]
    assert replayed["content"][3]["content"][0]["url"] == "https://sqlite.org/wal.html"
    assert fake.refusals == []


async def test_tool_input_streams_only_when_asked(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings)
    call = tool_use("read_skill", {"name": "pdf"})
    fake.queue(
        tool_reply(call), Reply(text="ok"), tool_reply(tool_use("read_skill", {"name": "pdf"})), Reply(text="ok")
    )
    frames = await chat(ws, "x", agentId="helper", streamToolInput=True)
    pieces = [f for f in frames if f["type"] == "chat.tool.input.delta"]
    assert len(pieces) > 1 and "".join(p["delta"] for p in pieces) == '{"name":"pdf"}'
    assert {(p["toolUseId"], p["name"], p["step"], p["requestId"]) for p in pieces} == {
        (call["id"], "read_skill", 1, "t1")
    }
    assert kinds(frames).index("chat.tool.input.delta") < kinds(frames).index("chat.step.end")
    quiet = await chat(ws, "again", sessionId=frames[0]["sessionId"])
    assert "chat.tool.input.delta" not in kinds(quiet)


async def test_the_inspector_shows_tools_calls_results_and_warns_when_results_dominate(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    root = make_agent(settings)
    (root / "skills" / "pdf" / "SKILL.md").write_text("---\nname: pdf\ndescription: PDFs.\n---\n" + "word " * 20_000)
    fake.queue(tool_reply(tool_use("read_skill", {"name": "pdf"})), Reply(text="read it"))
    frames = await chat(ws, "read the whole skill", agentId="helper")
    inspection = await request(
        ws, {"type": "context.inspect", "sessionId": frames[0]["sessionId"], "tools": [CLIENT_TOOL]}
    )
    sections = {s["name"]: s for s in inspection["sections"]}
    items = {i["name"]: i for i in sections["tools"]["items"]}
    assert [i["name"] for i in sections["tools"]["items"]] == ["read_skill", "read_skill_file", "memory", "locate"]
    assert (items["memory"]["executor"], items["memory"]["policy"]) == ("builtin", "allow")
    assert (items["locate"]["executor"], items["locate"]["policy"]) == ("client", "ask")
    assert sum(i["byteCount"] for i in items.values()) + len(items) + 1 == sections["tools"]["byteCount"]
    assert all(i["tokenEstimate"] > 0 and i["costEstimate"] > 0 for i in items.values())
    history = sections["history"]
    assert history["toolCalls"] == 1 and history["toolResults"]["count"] == 1
    assert history["toolResults"]["tokenEstimate"] > 0.5 * inspection["totals"]["tokenEstimate"]
    assert len(inspection["warnings"]) == 1 and inspection["warnings"][0].startswith("tool results are")


CLIENT_TOOL = {"name": "locate", "description": "Where the user is.", "input_schema": {"type": "object"}}


async def test_the_wall_clock_bound_stops_a_call_that_runs_too_long(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings, toml='[tools]\nmax_seconds = 0.5\n[tools.approval]\nlocate = "allow"\n')
    fake.queue(tool_reply(tool_use("locate")), Reply(text="Out of time; here is what I know."))
    frames = await chat(ws, "where am I?", agentId="helper", tools=[CLIENT_TOOL])  # the client never answers
    result = next(f for f in frames if f["type"] == "chat.tool.result")
    # Stopped while waiting for the client; or, on a machine so loaded that the first request alone took the half
    # second, refused before it started. Either way the time limit says so.
    assert result["status"] in ("interrupted", "error") and "time limit" in result["content"]
    end = frames[-1]
    assert (end["type"], end["boundHit"], end["requests"]) == ("chat.stream.end", "wall_clock", 2)
    assert fake.requests[-1].body["tool_choice"] == {"type": "none"}


async def test_a_resent_tool_turn_answers_with_its_whole_text(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings)
    fake.queue(tool_reply(tool_use("read_skill", {"name": "pdf"}), text="Reading. "), Reply(text="Done."))
    frames = await chat(ws, "once", agentId="helper", idempotencyKey="k1")
    again = await chat(ws, "once", agentId="helper", idempotencyKey="k1", id="t2")
    state = again[-1]
    assert (state["type"], state["status"], state["stopReason"]) == ("chat.state", "complete", "end_turn")
    assert state["text"] == "Reading. Done." and state["messageId"] == frames[-1]["messageId"]
    assert len(fake.requests) == 2


async def test_a_budget_too_small_for_the_next_request_ends_the_loop(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings, db_url: str
) -> None:
    # The first request fits the cap; once its $0.402 is spent, the next one's worst case (~$0.08) would not.
    make_agent(settings, toml="[budget]\ndaily_usd = 0.45\n")
    fake.queue(tool_reply(tool_use("read_skill", {"name": "pdf"}), input_tokens=1000, output_tokens=40_000))
    frames = await chat(ws, "expensive", agentId="helper")
    end = frames[-1]
    assert (end["type"], end["boundHit"], end["requests"], end["status"]) == (
        "chat.stream.end",
        "budget",
        1,
        "complete",
    )
    assert next(f for f in frames if f["type"] == "chat.tool.result")["status"] == "done"  # the call itself ran
    rows = await sql_rows(db_url, "select role, status from messages order by seq")
    assert [(r["role"], r["status"]) for r in rows] == [
        ("user", "complete"),
        ("assistant", "complete"),
        ("user", "complete"),
    ]
    fake.queue(Reply(text="ok"))
    refused = await chat(ws, "more", sessionId=frames[0]["sessionId"])
    assert refused[-1]["code"] == "BUDGET_EXCEEDED"  # the cap holds for the next send too


async def test_metrics_count_every_request_of_a_tool_turn(
    gateway: Gateway, ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    make_agent(settings)
    fake.queue(
        tool_reply(tool_use("read_skill", {"name": "pdf"}), input_tokens=100, output_tokens=20),
        Reply(text="ok", input_tokens=150, output_tokens=10),
    )
    end = (await chat(ws, "count me", agentId="helper"))[-1]
    samples = await scrape(gateway)
    assert value(samples, "agentspace_tokens_total", model="claude-sonnet-5-5", kind="input") == 250
    assert value(samples, "agentspace_tokens_total", model="claude-sonnet-5-5", kind="output") == 30
    assert value(samples, "agentspace_cost_usd_total", model="claude-sonnet-5-5") == pytest.approx(
        end["cost"]["totalCost"]
    )
    assert value(samples, "agentspace_turns_total", status="complete", code="") == 1  # one turn, not two


async def test_a_turn_that_compacts_first_still_runs_its_tools_with_its_max_tokens(
    ws: ClientWebSocketResponse, fake: FakeAnthropic, settings: Settings
) -> None:
    """The session is compacted automatically before the turn's first request; the turn's tools and `max_tokens`
    are still the ones it runs its calls and its next request with."""
    root = make_agent(settings, toml="[context]\nkeep_turns = 1\nauto_compact = false\n")
    session_id = (await chat(ws, "alpha " * 400, agentId="helper"))[0]["sessionId"]
    await chat(ws, "bravo " * 400, sessionId=session_id)
    await chat(ws, "Third.", sessionId=session_id)
    # Over 5 % of a 20,000-token window now: the next send compacts first (once: what is left is well under it).
    (root / "agent.toml").write_text("[context]\nkeep_turns = 1\nwindow = 20000\ncompact_at = 0.05\n")
    call = tool_use("read_skill", {"name": "pdf"})
    fake.queue(Reply(text="Summary of the talk so far."), tool_reply(call), Reply(text="Use pdftotext."))
    frames = await chat(ws, "How do I read a PDF?", sessionId=session_id, maxTokens=777)
    assert [f["type"] for f in frames].count("session.compacted") == 1
    [result] = [f for f in frames if f["type"] == "chat.tool.result"]
    assert (result["status"], result["content"]) == ("done", PDF_BODY)
    assert (frames[-1]["type"], frames[-1]["steps"]) == ("chat.stream.end", 2)
    assert [r.body["max_tokens"] for r in fake.requests[-2:]] == [777, 777]
