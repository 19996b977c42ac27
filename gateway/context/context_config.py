"""An agent's `[context]` settings from agent.toml: the window it works in, when its sessions are compacted, and
which old tool results and thinking are cleared from what is sent. docs/AGENTS.md documents every key; keep the two
in step.

Like every workspace parser, this never raises: a bad value falls back to its default and leaves a problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

DEFAULT_COMPACT_AT = 0.8
DEFAULT_KEEP_TURNS = 2
DEFAULT_SUMMARY_MAX_TOKENS = 4096
MAX_INSTRUCTIONS_CHARS = 2000


@dataclass(frozen=True, slots=True)
class ContextConfig:
    """docs/AGENTS.md, `[context]`."""

    window: int | None = None  # tokens: a window smaller than the model's (None: the model's own)
    auto_compact: bool = True  # compact before a request that would pass a threshold below
    compact_at: float = DEFAULT_COMPACT_AT  # share of the window
    compact_at_tokens: int | None = None  # estimated prompt tokens
    compact_at_nano_usd: int | None = None  # estimated input cost of the next request
    keep_turns: int = DEFAULT_KEEP_TURNS  # newest turns kept as they are; the older part is summarised
    summary_max_tokens: int = DEFAULT_SUMMARY_MAX_TOKENS
    summary_instructions: str = ""  # added to the summarisation request
    clear_tool_results: bool = False  # context editing: old tool results replaced by a placeholder
    keep_tool_uses: int = 3
    clear_thinking: bool = False  # context editing: old replies' thinking dropped
    keep_thinking_turns: int = 1
    # Edits move N at a time: every move changes the prompt from the first edited block on, so the prompt cache is
    # written again once per N tool uses (or replies) rather than with each one.
    clear_batch: int = 5
    problems: tuple[str, ...] = ()


_INTS: dict[str, tuple[int, int]] = {
    "window": (1000, 100_000_000),
    "compact_at_tokens": (1000, 100_000_000),
    "keep_turns": (0, 1000),
    "summary_max_tokens": (256, 128_000),
    "keep_tool_uses": (0, 10_000),
    "keep_thinking_turns": (0, 10_000),
    "clear_batch": (1, 10_000),
}
_BOOLS = ("auto_compact", "clear_tool_results", "clear_thinking")


def parse_context_config(table: object) -> ContextConfig:
    """From agent.toml's `[context]` table (None when absent)."""
    if table is None:
        return ContextConfig()
    if not isinstance(table, dict):
        return ContextConfig(problems=("[context] must be a table; using the defaults",))
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in _INTS:
            low, high = _INTS[key]
            if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
                values[key] = value
            else:
                problems.append(f"[context] {key} must be an integer from {low:,} to {high:,}; using the default")
        elif key in _BOOLS:
            if isinstance(value, bool):
                values[key] = value
            else:
                problems.append(f"[context] {key} must be true or false; using the default")
        elif key == "compact_at":
            share = _number(value)
            if share is not None and 0.05 <= share <= 1.0:
                values[key] = share
            else:
                problems.append(
                    f"[context] compact_at must be a share of the window from 0.05 to 1; using {DEFAULT_COMPACT_AT}"
                )
        elif key == "compact_at_usd":
            nano = _nano_usd(value)
            if nano is not None:
                values["compact_at_nano_usd"] = nano
            else:
                problems.append("[context] compact_at_usd must be dollars above 0, at most 9 decimals; ignored")
        elif key == "summary_instructions":
            if isinstance(value, str) and len(value) <= MAX_INSTRUCTIONS_CHARS and "\x00" not in value:
                values[key] = value.strip()
            else:
                problems.append(
                    f"[context] summary_instructions must be text of at most {MAX_INSTRUCTIONS_CHARS} characters;"
                    " ignored"
                )
        else:
            problems.append(f"[context]: unknown key {key[:64]!r} ignored")
    return ContextConfig(**values, problems=tuple(problems))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _nano_usd(value: object) -> int | None:
    if _number(value) is None:
        return None
    try:
        nano = Decimal(str(value)).scaleb(9)
    except InvalidOperation:
        return None
    if nano <= 0 or nano != nano.to_integral_value() or nano > 10**18:
        return None
    return int(nano)
