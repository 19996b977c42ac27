"""`agentspace context SESSION_ID`: what the session's next request would send, section by section.

It answers the very `context.inspect` request a WebSocket client would send (same validation, same assembler, same
measurements), read through the store; so the table and the inspector can never disagree.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError
from gateway.protocol import dump, parse_frame
from gateway.settings import Settings

COLUMNS = ("section", "items", "bytes", "tokens", "cost", "share", "")


def register(sub: Any) -> None:
    parser = sub.add_parser("context", help="show what a session's next request would send: bytes, tokens, cost")
    parser.add_argument("session_id", metavar="SESSION_ID")
    parser.add_argument("--draft", metavar="TEXT", help="a draft next message, included as the pending user turn")
    parser.add_argument("--model", metavar="M", help="inspect as if sending to this model")
    parser.add_argument("--exact", action="store_true", help="also ask Anthropic's count_tokens (needs a key)")
    parser.add_argument("--json", action="store_true", help="print the context.inspection frame instead")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    frame: dict[str, Any] = {"type": "context.inspect", "sessionId": args.session_id}
    for name, value in (("content", args.draft), ("model", args.model), ("exact", args.exact or None)):
        if value is not None:
            frame[name] = value
    missing = _missing_sqlite_file(settings.db_url)
    if missing is not None:
        print(f"agentspace: no database at {missing}; start the gateway once or set AGENTSPACE_DB_URL", file=sys.stderr)
        return 1
    try:
        request = parse_frame(json.dumps(frame), max_content_chars=settings.max_content_chars)
        inspection = asyncio.run(_inspect(settings, request))
    except GatewayError as exc:
        print(f"agentspace: {exc.message}", file=sys.stderr)
        return 1
    print(dump(inspection) if args.json else format_inspection(inspection))
    return 0


async def _inspect(settings: Settings, request: Any) -> dict[str, Any]:
    # Imported here: the store and the SDK take seconds to import, and every other command would pay for them.
    from gateway.chat.locks import LocalSessionLocks
    from gateway.chat.services import Services
    from gateway.server import queries
    from gateway.store import Database, Store
    from gateway.store.db import create_engine, make_sessionmaker

    engine = create_engine(settings.db_url, pool_size=1, max_overflow=0)
    services = Services.build(
        settings, Store(Database(engine, make_sessionmaker(engine)), settings.clock), LocalSessionLocks()
    )
    try:
        return await queries.context_inspect(services, request)
    finally:
        await services.tools.close()  # an agent's MCP servers, started to list their tools
        await services.upstream.close()
        await engine.dispose()


_MODEL_SOURCE = {"request": " (asked)", "session": " (the session's)", "default": " (the default)"}


def _missing_sqlite_file(db_url: str) -> Path | None:
    """Opening a SQLite URL would create an empty database; a read-only command should say it is not there."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    path = Path(url.database).expanduser()
    return None if path.exists() else path


def _usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.6f}"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    """Names left-aligned, numbers right-aligned, the last (note) column as is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for name, *numbers, note in rows:
        cells = [name.ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(numbers, widths[1:-1], strict=True)]
        lines.append("  ".join([*cells, note]).rstrip())
    return lines


def format_inspection(frame: dict[str, Any]) -> str:
    totals = frame["totals"]
    total_tokens = totals["tokenEstimate"]
    rows: list[tuple[str, ...]] = [COLUMNS]
    for s in frame["sections"]:
        share = s["tokenEstimate"] / total_tokens if total_tokens else 0.0
        rows.append(
            (
                s["name"],
                str(s["itemCount"]) if "itemCount" in s else "",
                f"{s['byteCount']:,}",
                f"{s['tokenEstimate']:,}",
                _usd(s["costEstimate"]),
                f"{share:.1%}",
                "truncated" if s.get("truncated") else "",
            )
        )
    rows.append(
        (
            "total",
            "",
            f"{totals['byteCount']:,}",
            f"{total_tokens:,}",
            _usd(totals["costEstimate"]),
            "100.0%" if total_tokens else "0.0%",
            "",
        )
    )
    source = _MODEL_SOURCE.get(frame.get("modelSource") or "", "")
    lines = [f"session {frame['sessionId']} ({frame['sessionKey']}), model {frame['model']}{source}", ""]
    lines.extend(_table(rows))
    lines.append("")
    estimate = total_tokens + frame["requestOverheadTokens"]
    line = f"estimate {estimate:,} tokens ({total_tokens:,} + {frame['requestOverheadTokens']} request overhead)"
    if frame["calibratedTokenEstimate"] is not None:
        line += f"; calibrated {frame['calibratedTokenEstimate']:,} (x{frame['calibrationRatio']} from reported usage)"
    lines.append(line)
    window = frame["contextWindow"]
    if window:
        lines.append(f"window {window:,} tokens, {frame['windowShare']:.2%} used; max_tokens {frame['maxTokens']:,}")
    else:
        lines.append(f"window unknown for {frame['model']}; max_tokens {frame['maxTokens']:,}")
    if not frame["priced"]:
        lines.append(f"no price known for {frame['model']}: costs are not estimated")
    if "exactInputTokens" in frame:
        error = frame.get("exactError")
        exact = f"{frame['exactInputTokens']:,}" if error is None else f"none ({error['code']}: {error['message']})"
        lines.append(f"exact input tokens (count_tokens): {exact}")
    lines.append(f"counter {frame['tokenCounter']}")
    lines.extend(f"problem: {problem}" for problem in frame["problems"])
    lines.extend(f"warning: {warning}" for warning in frame.get("warnings", []))
    return "\n".join(lines)
