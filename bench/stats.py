"""Percentiles and the per-run recorder the load generator fills in."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (P99 of 100 samples is the 99th smallest); None for no samples."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, Any]:
    """n, mean, P50/P90/P99 and max, in the unit given, rounded for reading."""
    if not values:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {
        "n": len(values),
        "mean": r(sum(values) / len(values)),
        "p50": r(percentile(values, 50)),
        "p90": r(percentile(values, 90)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values)),
    }


@dataclass
class Recorder:
    """What one streaming run saw. Rates count events inside [start, end); latencies, turns sent inside it.

    Counting completions (not whole turns) inside the window keeps the rate unbiased by turn length; the warm-up
    before `start` lets connections, pools and caches fill before anything is counted.
    """

    start: float
    end: float
    stall_s: float
    ttft_ms: list[float] = field(default_factory=list)
    turn_ms: list[float] = field(default_factory=list)
    end_ms: list[float] = field(default_factory=list)  # last delta to the stream's end (the usage and cost frame)
    turns_completed: int = 0  # completions inside the window
    deltas: int = 0  # deltas received inside the window
    turns_total: int = 0  # every completed turn, warm-up and tail included
    deltas_total: int = 0
    max_gap_ms: float = 0.0  # longest pause between two deltas of one stream (or the last delta and the end)
    stalled: int = 0  # turns with a pause (or a first token) longer than stall_s, or that never finished
    unfinished: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def in_window(self, t: float) -> bool:
        return self.start <= t < self.end

    def delta(self, now: float) -> None:
        self.deltas_total += 1
        if self.start <= now < self.end:
            self.deltas += 1

    def turn_done(
        self, sent: float, first: float | None, now: float, max_gap_s: float, last: float | None = None
    ) -> None:
        self.turns_total += 1
        if self.start <= now < self.end:
            self.turns_completed += 1
        if self.start <= sent < self.end:
            if first is not None:
                self.ttft_ms.append((first - sent) * 1000)
            self.turn_ms.append((now - sent) * 1000)
            if last is not None:
                self.end_ms.append((now - last) * 1000)
        self.max_gap_ms = max(self.max_gap_ms, max_gap_s * 1000)
        ttft_s = (first - sent) if first is not None else 0.0
        if max_gap_s > self.stall_s or ttft_s > self.stall_s:
            self.stalled += 1

    def error(self, code: str) -> None:
        self.errors[code] += 1

    def result(self) -> dict[str, Any]:
        window = self.end - self.start
        return {
            "window_s": round(window, 3),
            "turns_per_s": round(self.turns_completed / window, 2),
            "deltas_per_s": round(self.deltas / window, 1),
            "turns_completed": self.turns_completed,
            "turns_total": self.turns_total,
            "deltas_total": self.deltas_total,
            "ttft_ms": summary(self.ttft_ms),
            "turn_ms": summary(self.turn_ms),
            "end_ms": summary(self.end_ms),
            "max_gap_ms": round(self.max_gap_ms, 1),
            "stalled": self.stalled,
            "unfinished": self.unfinished,
            "errors": dict(self.errors),
        }
