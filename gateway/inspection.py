"""Measuring an assembled request: bytes, token estimates and cost per section, the window, calibration."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .accounting import nano_to_usd
from .context import Assembled, Section
from .models import TokenCalibration
from .prices import PriceBook
from .tokens import TokenCounter

# The API wraps each request in a few tokens of its own (roles, separators); a small, honest fudge.
REQUEST_OVERHEAD_TOKENS = 3


@dataclass(frozen=True, slots=True)
class Measured:
    section: Section
    byte_count: int
    token_estimate: int


def section_tokens(section: Section, counter: TokenCounter) -> int:
    if section.name == "history" and isinstance(section.content, list):
        # Per message, so each turn's count is cached and a long session is only counted once.
        return sum(counter.count_json(turn) for turn in section.content)
    if isinstance(section.content, list):
        return counter.count_json(section.content) if section.content else 0
    return counter.count(section.content) if section.content else 0


def measure(assembled: Assembled, counter: TokenCounter) -> list[Measured]:
    return [
        Measured(s, len(s.wire_text.encode("utf-8", "surrogatepass")) if s.content else 0, section_tokens(s, counter))
        for s in assembled.sections
    ]


def estimate_input_tokens(assembled: Assembled, counter: TokenCounter) -> int:
    return sum(section_tokens(s, counter) for s in assembled.sections) + REQUEST_OVERHEAD_TOKENS


def calibration_ratio(row: TokenCalibration | None) -> float | None:
    """Reported / estimated input tokens over every request so far for the model; None until there is data."""
    if row is None or row.samples == 0 or row.estimated_tokens <= 0:
        return None
    return row.reported_tokens / row.estimated_tokens


def calibrated(estimate: int, ratio: float | None) -> int:
    return estimate if ratio is None else round(estimate * ratio)


def inspection_body(
    assembled: Assembled,
    counter: TokenCounter,
    prices: PriceBook,
    *,
    at: datetime,
    ratio: float | None,
) -> dict[str, Any]:
    """Everything of the `context.inspection` frame that describes the request itself."""
    measured = measure(assembled, counter)
    estimate = sum(m.token_estimate for m in measured) + REQUEST_OVERHEAD_TOKENS
    best = calibrated(estimate, ratio)
    # The tier is chosen by the size of the whole prompt, as the bill will be; the best estimate picks it.
    rate = prices.input_rate(assembled.model, at, best)
    sections: list[dict[str, Any]] = []
    total_bytes = total_tokens = 0
    total_cost: int | None = 0 if rate is not None else None
    for m in measured:
        cost = None if rate is None else m.token_estimate * rate
        entry: dict[str, Any] = {
            "name": m.section.name,
            "content": m.section.content,
            "byteCount": m.byte_count,
            "tokenEstimate": m.token_estimate,
            "costEstimate": nano_to_usd(cost),
        }
        if m.section.item_count is not None:
            entry["itemCount"] = m.section.item_count
        if m.section.truncated is not None:
            entry["truncated"] = m.section.truncated
        sections.append(entry)
        total_bytes += m.byte_count
        total_tokens += m.token_estimate
        if total_cost is not None and cost is not None:
            total_cost += cost
    window = prices.context_window(assembled.model)
    return {
        "model": assembled.model,
        "sections": sections,
        "totals": {
            "byteCount": total_bytes,
            "tokenEstimate": total_tokens,
            "costEstimate": nano_to_usd(total_cost),
        },
        "tokenCounter": counter.name,
        "requestOverheadTokens": REQUEST_OVERHEAD_TOKENS,
        "calibratedTokenEstimate": None if ratio is None else best,
        "calibrationRatio": None if ratio is None else round(ratio, 4),
        "contextWindow": window,
        "windowShare": None if not window else round(best / window, 6),
        "maxTokens": assembled.params["max_tokens"],
        "cacheMode": assembled.cache_mode,
        "priced": rate is not None,
    }
