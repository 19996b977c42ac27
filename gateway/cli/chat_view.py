"""How `agentspace chat` prints things: the stats line after a reply, and the /sessions, /context, /usage tables."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from typing import Any, TextIO

from gateway.client import ApprovalRequest, ChatEnd, ToolCall, ToolResult

Frame = dict[str, Any]

HELP = """commands:
  /new          start a new session (the next message opens it)
  /sessions     list sessions, newest first (* marks the current one)
  /switch ID    continue session ID (a unique prefix is enough)
  /context      what the next request would send: bytes, tokens and cost per section
  /compact [TEXT]  summarise the session's older part (TEXT: what the summary must keep)
  /usage        tokens and cost of this session and of everything, per model
  /cancel       stop the reply that is streaming (Ctrl-C does the same)
  /help         this list
  /quit         leave (Ctrl-D, or Ctrl-C twice at the prompt)
tool calls that need approval ask "? run NAME {input}  [y/N/always]": y runs it once, n (or Enter) denies it,
always runs this tool unasked for the rest of the session; Ctrl-C cancels the turn"""


class Style:
    """ANSI styling only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""

    def __init__(self, stream: TextIO) -> None:
        self.enabled = stream.isatty() and not os.environ.get("NO_COLOR")

    def _wrap(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled and text else text

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)


def num(value: int | float | None) -> str:
    return "-" if value is None else f"{int(value):,}"


def usd(value: float | None) -> str:
    return "unpriced" if value is None else f"${value:.6f}"


def short_id(session_id: str | None) -> str:
    return (session_id or "")[:8]


def stats_line(end: ChatEnd) -> str:
    u = end.usage
    parts = [f"{num(u.input_tokens)} in", f"{num(u.output_tokens)} out"]
    if u.cache_read_input_tokens:
        parts.append(f"{num(u.cache_read_input_tokens)} cache read")
    if u.cache_creation_input_tokens:
        parts.append(f"{num(u.cache_creation_input_tokens)} cache write")
    parts.append(usd(end.cost.total))
    parts.append(f"{end.duration_ms / 1000:.1f}s")
    if end.status != "complete":
        parts.append(end.status)
    elif end.stop_reason not in (None, "end_turn"):
        parts.append(f"stopped: {end.stop_reason}")
    parts.append(f"session {short_id(end.session_id)}")
    return "[" + " · ".join(parts) + "]"


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # a tool's output must not steer the terminal (ANSI escapes)


def clip(text: str, limit: int) -> str:
    text = _CONTROL.sub(" ", text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def short_input(value: object, limit: int = 60) -> str:
    return clip(json.dumps(value, ensure_ascii=False, separators=(",", ":")), limit)


def tool_line(call: ToolCall | None, result: ToolResult) -> str:
    """One line per call: `⚙ read_skill {"name":"pdf"} → ok (3 ms)`, or the start of the error the model reads."""
    shown = f"{result.name} {short_input(call.input)}" if call is not None else result.name
    outcome = "ok" if result.ok else result.status
    if not result.ok:
        first = result.content.strip().splitlines()[0] if result.content.strip() else ""
        outcome += f": {clip(first, 80)}" if first else ""
    took = f" ({result.duration_ms:,} ms)" if result.duration_ms is not None else ""
    return f"⚙ {shown} → {outcome}{took}"


def approval_prompt(request: ApprovalRequest) -> str:
    expires = f", expires {request.expires_at.astimezone():%H:%M:%S}" if request.expires_at is not None else ""
    return f"? run {request.name} {short_input(request.input, 100)}  [y/N/always{expires}] "


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """The first `left` columns (names) left-aligned, the numbers after them right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in pairs]
        return "  ".join(cells).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def sessions_view(frame: Frame, current: str | None) -> str:
    sessions = frame.get("sessions") or []
    if not sessions:
        return "no sessions yet"
    rows = []
    for s in sessions:
        mark = "*" if s["sessionId"] == current else " "
        title = (s.get("title") or "").replace("\n", " ")
        title = title if len(title) <= 40 else title[:39] + "…"
        rows.append(
            [
                f"{mark} {short_id(s['sessionId'])}",
                title,
                num(s.get("messageCount")),
                str(s.get("updatedAt", ""))[:16].replace("T", " "),
            ]
        )
    return table(["  id", "title", "msgs", "updated (UTC)"], rows, left=2)


_MODEL_SOURCE = {"request": "asked", "session": "the session's", "default": "the default"}


def context_view(frame: Frame) -> str:
    sections = frame.get("sections") or []
    totals = frame.get("totals") or {}
    total_tokens = totals.get("tokenEstimate") or 0
    rows = []
    for s in sections:
        share = f"{100 * s['tokenEstimate'] / total_tokens:.1f}%" if total_tokens else "-"
        rows.append([s["name"], num(s["byteCount"]), num(s["tokenEstimate"]), usd(s.get("costEstimate")), share])
    rows.append(["total", num(totals.get("byteCount")), num(total_tokens), usd(totals.get("costEstimate")), ""])
    lines = [
        f"model {frame.get('model')} ({_MODEL_SOURCE.get(str(frame.get('modelSource')), 'as sent')})"
        f" · agent {frame.get('agentId')} · session {short_id(frame.get('sessionId'))}",
        table(["section", "bytes", "tokens", "cost", "share"], rows),
    ]
    window, window_share = frame.get("contextWindow"), frame.get("windowShare")
    if window:
        best = frame.get("calibratedTokenEstimate") or total_tokens + (frame.get("requestOverheadTokens") or 0)
        lines.append(
            f"window: {num(best)} of {num(window)} tokens ({100 * (window_share or 0):.4f}%), "
            f"max_tokens {num(frame.get('maxTokens'))}, counted by {frame.get('tokenCounter')}"
        )
    for problem in frame.get("problems") or []:
        lines.append(f"problem: {problem}")
    return "\n".join(lines)


def compacted_line(frame: Frame) -> str:
    """One `session.compacted` frame, in a line."""
    cost = (frame.get("cost") or {}).get("totalCost")
    when = "automatically, " if frame.get("trigger") == "auto" else ""
    return (
        f"(compacted {when}{frame.get('compactedMessages')} messages into a summary, {frame.get('keptMessages')} kept:"
        f" next request {num(frame.get('tokensBefore'))} -> {num(frame.get('tokensAfter'))} tokens; {usd(cost)})"
    )


def usage_view(session_report: Frame | None, overall: Frame) -> str:
    blocks = []
    for title, report in (("this session", session_report), ("all sessions", overall)):
        if report is None:
            continue
        per_model: dict[str, Frame] = report.get("perModel") or {}
        rows = [_usage_row(model, t) for model, t in sorted(per_model.items())]
        if len(rows) != 1:
            rows.append(_usage_row("total", report.get("grandTotal") or {}))
        headers = ["model", "requests", "in", "out", "cache read", "cache write", "total", "cost"]
        blocks.append(f"{title}:\n" + table(headers, rows))
        if report.get("unpricedRequests"):
            blocks.append(f"({report['unpricedRequests']} requests to unpriced models are not in the cost)")
    return "\n".join(blocks)


def _usage_row(name: str, t: Frame) -> list[str]:
    return [
        name,
        num(t.get("requestCount", 0)),
        num(t.get("inputTokens", 0)),
        num(t.get("outputTokens", 0)),
        num(t.get("cacheReadInputTokens", 0)),
        num(t.get("cacheCreationInputTokens", 0)),
        num(t.get("totalTokens", 0)),
        usd(t.get("totalCost", 0.0)),
    ]


def history_tail(frame: Frame, count: int = 2) -> str:
    lines = []
    for m in (frame.get("messages") or [])[-count:]:
        text = (m.get("text") or "").replace("\n", " ")
        lines.append(f"{m['role']}: {text if len(text) <= 100 else text[:99] + '…'}")
    return "\n".join(lines)
