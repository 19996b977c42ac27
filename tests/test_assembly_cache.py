"""Kept turns (gateway/context/assembly_cache.py) never change what is sent: a session assembled with the cache, turn
after turn, is the request assembled whole, and its encoded body is the compact JSON of those parameters, byte for
byte, measured the same. Sessions are random mixes of what history holds: plain turns, tool calls and results,
server tools, failed replies (no reply, empty reply, thinking only), summaries and compacted messages."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from gateway.context.assembly import assemble
from gateway.context.assembly_cache import TurnCache
from gateway.context.inspection import measure
from gateway.context.request_body import request_body
from gateway.context.tokens import TokenCounter, compact_json
from gateway.context.workspace import Workspace
from gateway.store import HistoryItem

WORKSPACE = Workspace(
    agent_id="default",
    system_prompt="You are a test.",
    system_truncated=False,
    memory="",
    memory_truncated=False,
    skills=(),
    skills_truncated=False,
    tools=({"name": "t", "description": "d", "input_schema": {"type": "object"}},),
    tools_truncated=False,
    model=None,
    cache_mode="5m",
    max_tokens=None,
    problems=(),
)


def _item(rng: random.Random, n: int, role: str, content: list[dict[str, Any]], **kw: Any) -> HistoryItem:
    return HistoryItem(f"m{n}", role, content, f"v{n}", **kw)


def _grow(rng: random.Random, history: list[HistoryItem], n: int) -> list[HistoryItem]:
    """One more step of a session, as a turn or a tool loop would store it."""
    kind = rng.choice(["turn", "turn", "turn", "tools", "failed", "empty", "thinking", "server", "unicode"])
    user = _item(rng, n, "user", [{"type": "text", "text": f"question {n}"}])
    if kind == "turn":
        return [*history, user, _item(rng, n + 1, "assistant", [{"type": "text", "text": f"answer {n}"}])]
    if kind == "unicode":
        text = 'naïve ☃ \u2028 "quoted" \\ 😀'
        return [*history, user, _item(rng, n + 1, "assistant", [{"type": "text", "text": text}])]
    if kind == "failed":
        return [*history, user]  # the reply failed before it was stored with any text
    if kind == "empty":
        return [*history, user, _item(rng, n + 1, "assistant", [{"type": "text", "text": ""}])]
    if kind == "thinking":
        block = {"type": "thinking", "thinking": "hmm", "signature": "c2ln"}
        return [*history, user, _item(rng, n + 1, "assistant", [block])]
    if kind == "server":
        use = {"type": "server_tool_use", "id": f"s{n}", "name": "web_search", "input": {}}
        blocks = [use] if rng.random() < 0.5 else [use, {"type": "web_search_tool_result", "tool_use_id": f"s{n}"}]
        return [*history, user, _item(rng, n + 1, "assistant", [*blocks, {"type": "text", "text": "found"}])]
    call = {"type": "tool_use", "id": f"c{n}", "name": "t", "input": {"n": n}}
    result = {"type": "tool_result", "tool_use_id": f"c{n}", "content": "ok"}
    out = [*history, user, _item(rng, n + 1, "assistant", [call])]
    if rng.random() < 0.8:  # sometimes the results never came (a crash mid-call)
        out.append(_item(rng, n + 2, "user", [result]))
        out.append(_item(rng, n + 3, "assistant", [{"type": "text", "text": "done"}]))
    return out


def _compact(rng: random.Random, history: list[HistoryItem], n: int) -> list[HistoryItem]:
    """Mark the older half compacted by a new summary (stored after the kept messages, as the store does)."""
    cut = len(history) // 2
    summary = HistoryItem(f"sum{n}", "assistant", [{"type": "text", "text": "summary"}], f"v{n}", kind="summary")
    older = [
        HistoryItem(m.id, m.role, m.content, m.version, m.status, m.kind, summary.id) if m.compacted_by is None else m
        for m in history[:cut]
    ]
    return [*older, *history[cut:], summary]


async def _same(history: list[HistoryItem], pending: str | None, cache: TurnCache, counter: TokenCounter) -> None:
    kept = assemble(WORKSPACE, history, pending=pending, model="m", max_tokens=10, cache=cache)
    whole = assemble(WORKSPACE, history, pending=pending, model="m", max_tokens=10)
    assert kept.params == whole.params
    assert [(s.name, s.content, s.item_keys) for s in kept.sections] == [
        (s.name, s.content, s.item_keys) for s in whole.sections
    ]
    body = request_body(kept)
    assert body == compact_json({**whole.params, "stream": True}).encode()
    assert json.loads(body)["messages"] == whole.params["messages"]
    sizes = [(m.byte_count, m.token_estimate) for m in await measure(kept, counter)]
    assert sizes == [(m.byte_count, m.token_estimate) for m in await measure(whole, counter)]
    if not any(m.kind == "summary" for m in history):
        assert sizes[-1][0] == len(compact_json(whole.params["messages"]).encode())


@pytest.mark.parametrize("seed", range(12))
async def test_kept_turns_assemble_as_the_whole(seed: int) -> None:
    rng = random.Random(seed)
    cache, counter = TurnCache(), TokenCounter()
    history: list[HistoryItem] = []
    n = 0
    for _ in range(40):
        history = _grow(rng, history, n)
        n += 4
        if rng.random() < 0.08:
            history = _compact(rng, history, n)
            n += 1
        await _same(history, f"next {n}" if rng.random() < 0.8 else None, cache, counter)
    # A history that no longer starts as kept (edited, or another process rewrote it) is assembled whole again.
    changed = [HistoryItem(history[0].id, "user", [{"type": "text", "text": "edited"}], "v-new"), *history[1:]]
    await _same(changed, "after an edit", cache, counter)


async def test_a_long_session_is_encoded_from_what_was_kept() -> None:
    cache, counter = TurnCache(), TokenCounter()
    history: list[HistoryItem] = []
    for n in range(0, 2000, 2):
        history += [
            HistoryItem(f"u{n}", "user", [{"type": "text", "text": f"q{n}"}], "v"),
            HistoryItem(f"a{n}", "assistant", [{"type": "text", "text": f"a{n}"}], "v"),
        ]
    await _same(history, "first", cache, counter)
    history += [HistoryItem("u-last", "user", [{"type": "text", "text": "first"}], "v")]
    history += [HistoryItem("a-last", "assistant", [{"type": "text", "text": "reply"}], "v")]
    kept = assemble(WORKSPACE, history, pending="second", model="m", max_tokens=10, cache=cache)
    prefix = next(s for s in kept.sections if s.name == "history").prefix
    assert prefix is not None and prefix.turns >= 2000  # all but the newest exchange came from the cache
    await _same(history, "second", cache, counter)
