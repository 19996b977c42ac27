"""Every `tool_use` replayed to the model is answered by a `tool_result` at the start of the next user turn, and every
`tool_result` answers one: otherwise the API refuses the request (and every later one) with a 400. The stored
history pairs them already (gateway/store/tool_calls.py); this is the net under rows from before tool loops, a reply
cut off in the middle of a call, or a hand-edited database."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

UNRECORDED = "No result was recorded for this call; it may not have run."
SERVER_USES = ("server_tool_use", "mcp_tool_use")


def _server_result(block: dict[str, Any]) -> bool:
    kind = str(block.get("type", ""))
    return kind.endswith("_tool_result") and kind != "tool_result"


def _pair_server_tools(blocks: list[dict[str, Any]], last: bool) -> list[dict[str, Any]]:
    """Anthropic's own tools: a use and its result sit in the same assistant turn (a paused last turn may hold a use
    whose result is still to come)."""
    uses = {b.get("id") for b in blocks if b.get("type") in SERVER_USES}
    results = {b.get("tool_use_id") for b in blocks if _server_result(b)}
    kept = [
        b
        for b in blocks
        if not (b.get("type") in SERVER_USES and b.get("id") not in results and not last)
        and not (_server_result(b) and b.get("tool_use_id") not in uses)
    ]
    return kept if len(kept) != len(blocks) else blocks


def _answered(expected: list[str], blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for block in blocks:
        if block.get("type") == "tool_result" and block.get("tool_use_id") in expected:
            found.setdefault(block["tool_use_id"], block)
    results = [
        found.get(i) or {"type": "tool_result", "tool_use_id": i, "content": UNRECORDED, "is_error": True}
        for i in expected
    ]
    return results + [b for b in blocks if b.get("type") != "tool_result"]


def pair_tool_blocks(turns: list[dict[str, Any]], keys: list[tuple[Hashable, ...] | None]) -> None:
    """Repair `turns` in place (turn by turn, never a block in place: blocks are shared with the store's caches)."""
    changed: set[int] = set()
    for i, turn in enumerate(turns):
        if turn["role"] != "assistant":
            continue
        blocks = _pair_server_tools(turn["content"], last=i == len(turns) - 1)
        if blocks is not turn["content"]:
            turn["content"] = blocks
            changed.add(i)
    i = 0
    while i < len(turns):
        turn = turns[i]
        if turn["role"] == "user":
            before = turns[i - 1] if i > 0 else None
            expected = [b["id"] for b in before["content"] if b.get("type") == "tool_use"] if before else []
            blocks = _answered(expected, turn["content"])
            if blocks != turn["content"]:
                turn["content"] = blocks
                changed.add(i)
        elif i == len(turns) - 1 and any(b.get("type") == "tool_use" for b in turn["content"]):
            turns.append({"role": "user", "content": []})
            keys.append(("unanswered",))
        i += 1
    for i in changed:
        key = keys[i]
        if key is not None:
            keys[i] = (*key, ("paired",))
    # A turn left empty (only results of calls no longer in history) is dropped; the API refuses empty turns.
    for i in range(len(turns) - 1, -1, -1):
        if not turns[i]["content"]:
            del turns[i], keys[i]
