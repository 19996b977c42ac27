"""The `history` scenario: what a session's length costs the first token. One client continues a conversation that
already holds N messages, turn after turn: through the gateway (a session seeded with them, continued by
`chat.send`) and straight to the upstream (the same N messages sent by the SDK, the conversation kept by the
client, as a stateless API client does). Both sides send the same content and grow alike, two messages a turn.

The conversation is deterministic, so the seeder (which writes the gateway's session before it starts) and the load
generator (which sends it directly) build the same messages without passing them around.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from .clients import direct_client, direct_turn, ws_turn
from .procs import cpu_seconds
from .rows import message_row, session_row
from .stats import Recorder

WORDS = (
    "the gateway keeps every session message and usage record in sql so history survives restarts context window "
    "tokens cost cache prompt model reply stream thinking signature agent memory skill index query latency"
).split()


def conversation(n: int, seed: int = 11) -> list[dict[str, Any]]:
    """N messages, user and assistant in turn (a user message first), as the API takes them: text blocks."""
    rng = random.Random(seed + n)
    out: list[dict[str, Any]] = []
    for i in range(n):
        words = rng.randint(20, 120) if i % 2 == 0 else rng.randint(50, 300)
        text = " ".join(rng.choices(WORDS, k=words))
        out.append({"role": "user" if i % 2 == 0 else "assistant", "content": [{"type": "text", "text": text}]})
    return out


def session_rows(session_id: str, n: int, now: datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The session and its messages as the gateway stores them."""
    start = now - timedelta(days=1)
    rows = []
    for seq, message in enumerate(conversation(n)):
        at = start + timedelta(seconds=seq)
        text = message["content"][0]["text"]
        message_id = f"00000000-{n:04d}-4000-8000-{seq:012d}"
        rows.append(message_row(message_id, session_id, seq, message["role"], message["content"], text, at))
    session = session_row(session_id, f"A conversation of {n} messages", n, start, now)
    return session, rows


def history_session_id(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def now_naive() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


async def op_history(cmd: dict[str, Any]) -> dict[str, Any]:
    """One client, `warmup` unrecorded turns then `turns` recorded ones, continuing a conversation of `messages`
    earlier messages; CPU per recorded turn of the process `pid` (the gateway; for direct, this load generator)."""
    from gateway.client import GatewayClient

    n, turns, warmup = int(cmd["messages"]), int(cmd["turns"]), int(cmd.get("warmup", 3))
    timeout = float(cmd.get("turn_timeout_s", 120))
    rec = Recorder(start=float("inf"), end=float("inf"), stall_s=float(cmd.get("stall_s", 2.0)))
    pid = int(cmd["pid"])
    cpu_before = 0.0
    if cmd["target"] == "direct":
        client = direct_client(cmd["url"])
        history = conversation(n)
        try:
            for i in range(warmup + turns):
                if i == warmup:
                    rec.start, cpu_before = time.perf_counter(), cpu_seconds(pid)
                await direct_turn(client, f"History turn {i}: answer briefly.", rec, history)
        finally:
            await client.close()
    else:
        session_id: str | None = history_session_id(n) if n else None
        async with GatewayClient.connect(cmd["url"], request_timeout=timeout) as gw:
            for i in range(warmup + turns):
                if i == warmup:
                    rec.start, cpu_before = time.perf_counter(), cpu_seconds(pid)
                session_id = await ws_turn(gw, f"History turn {i}: answer briefly.", session_id, rec, timeout)
    cpu_ms = (cpu_seconds(pid) - cpu_before) * 1000
    rec.end = time.perf_counter()
    result = rec.result()
    result.update(messages=n, cpu_ms_per_turn=round(cpu_ms / max(1, turns), 3))
    return result
