"""Token usage and cost arithmetic. Expected values are worked out by hand, in nano-USD."""

from __future__ import annotations

import pytest
from anthropic.types import CacheCreation, MessageDeltaUsage, Usage

from gateway.billing.accounting import Cost, Rates, TokenUsage, compute_cost, nano_to_usd, usd_str

# Sonnet 5.5 from 2026-10-07: $2 / $10 / $2.50 / $4 / $0.10 per MTok.
SONNET_55 = Rates(input=2000, output=10000, cache_write_5m=2500, cache_write_1h=4000, cache_read=100)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # Cost(input, output, cache_write, cache_read, uncached)
        (TokenUsage(input_tokens=1000), Cost(2_000_000, 0, 0, 0, 2_000_000)),
        (TokenUsage(output_tokens=1000), Cost(0, 10_000_000, 0, 0, 10_000_000)),
        (TokenUsage(cache_write_5m_tokens=1000), Cost(0, 0, 2_500_000, 0, 2_000_000)),
        (TokenUsage(cache_write_1h_tokens=1000), Cost(0, 0, 4_000_000, 0, 2_000_000)),
        (TokenUsage(cache_read_tokens=1000), Cost(0, 0, 0, 100_000, 2_000_000)),
        # 1234*2000 | 567*10000 | 2000*2500 + 3000*4000 | 50000*100 | 56234*2000 + 567*10000
        (TokenUsage(1234, 567, 2000, 3000, 50000), Cost(2_468_000, 5_670_000, 17_000_000, 5_000_000, 118_138_000)),
    ],
)
def test_compute_cost_each_token_type(usage: TokenUsage, expected: Cost) -> None:
    assert compute_cost(usage, SONNET_55) == expected


@pytest.mark.parametrize(
    ("usage", "total", "saved"),
    [
        (TokenUsage(1234, 567, 2000, 3000, 50000), 30_138_000, 88_000_000),
        (TokenUsage(cache_read_tokens=1000), 100_000, 1_900_000),
        # A 1h write costs 2x input and saves nothing until it is read: caching lost money on this request.
        (TokenUsage(cache_write_1h_tokens=1000), 4_000_000, -2_000_000),
        (TokenUsage(), 0, 0),
    ],
)
def test_total_and_saved(usage: TokenUsage, total: int, saved: int) -> None:
    cost = compute_cost(usage, SONNET_55)
    assert (cost.total, cost.saved) == (total, saved)


def test_prompt_tokens_and_cache_creation() -> None:
    usage = TokenUsage(
        input_tokens=1, output_tokens=1000, cache_write_5m_tokens=20, cache_write_1h_tokens=300, cache_read_tokens=4000
    )
    assert usage.cache_creation_input_tokens == 320
    assert usage.prompt_tokens == 4321  # output is not part of the prompt


def test_negative_counts_refused() -> None:
    with pytest.raises(ValueError, match="input_tokens"):
        TokenUsage(input_tokens=-1)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # No TTL breakdown: every cache write is a 5-minute write.
        (
            {"input_tokens": 10, "output_tokens": 5, "cache_creation_input_tokens": 300, "cache_read_input_tokens": 40},
            TokenUsage(10, 5, 300, 0, 40),
        ),
        (
            {
                "input_tokens": 10,
                "output_tokens": 5,
                "cache_creation_input_tokens": 300,
                "cache_read_input_tokens": 40,
                "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
            },
            TokenUsage(10, 5, 100, 200, 40),
        ),
        # A write total above its TTL breakdown: the rest is billed at the 5-minute rate, not dropped.
        (
            {
                "input_tokens": 10,
                "output_tokens": 5,
                "cache_creation_input_tokens": 300,
                "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 150},
            },
            TokenUsage(10, 5, 150, 150, 0),
        ),
        # None fields (the SDK's Optional[int]) are zeros.
        (
            {
                "input_tokens": 7,
                "output_tokens": None,
                "cache_creation_input_tokens": None,
                "cache_read_input_tokens": None,
                "cache_creation": None,
            },
            TokenUsage(7, 0, 0, 0, 0),
        ),
        ({}, TokenUsage()),
    ],
)
def test_from_api_dict(raw: dict[str, object], expected: TokenUsage) -> None:
    assert TokenUsage.from_api(raw) == expected


def test_from_api_sdk_objects() -> None:
    with_breakdown = Usage(
        input_tokens=10,
        output_tokens=1,
        cache_creation_input_tokens=300,
        cache_read_input_tokens=40,
        cache_creation=CacheCreation(ephemeral_5m_input_tokens=100, ephemeral_1h_input_tokens=200),
    )
    assert TokenUsage.from_api(with_breakdown) == TokenUsage(10, 1, 100, 200, 40)
    without = Usage(input_tokens=10, output_tokens=1, cache_creation_input_tokens=300, cache_read_input_tokens=None)
    assert TokenUsage.from_api(without) == TokenUsage(10, 1, 300, 0, 0)
    delta = MessageDeltaUsage(output_tokens=57)
    assert TokenUsage.from_api(delta) == TokenUsage(output_tokens=57)


def test_from_api_rejects_non_integers() -> None:
    with pytest.raises(ValueError, match="input_tokens"):
        TokenUsage.from_api({"input_tokens": "10"})


START = TokenUsage(
    input_tokens=10, output_tokens=1, cache_write_5m_tokens=100, cache_write_1h_tokens=200, cache_read_tokens=40
)


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        # The usual delta: only the cumulative output count. Output is replaced, never added (1 + 57 would be wrong).
        (TokenUsage(output_tokens=57), TokenUsage(10, 57, 100, 200, 40)),
        # A delta repeating the start's counts: its write total (300, no TTL split) matches, so the 100/200 split stays.
        (TokenUsage(10, 57, 300, 0, 40), TokenUsage(10, 57, 100, 200, 40)),
        # Non-zero counts that differ replace the start's.
        (TokenUsage(12, 60, 0, 0, 45), TokenUsage(12, 60, 100, 200, 45)),
        (TokenUsage(0, 60, 500, 0, 0), TokenUsage(10, 60, 500, 0, 40)),
    ],
)
def test_merged(delta: TokenUsage, expected: TokenUsage) -> None:
    assert START.merged(delta) == expected


@pytest.mark.parametrize(
    ("nano", "usd", "text"),
    [
        (123_450, 0.00012345, "0.000123450"),
        (30_138_000, 0.030138, "0.030138000"),
        (1, 0.000000001, "0.000000001"),
        (12_345_678_901, 12.345678901, "12.345678901"),
        (-2_000_000, -0.002, "-0.002000000"),
        (0, 0.0, "0.000000000"),
        (None, None, "n/a"),
    ],
)
def test_nano_to_usd_and_usd_str(nano: int | None, usd: float | None, text: str) -> None:
    assert nano_to_usd(nano) == usd
    assert usd_str(nano) == text
