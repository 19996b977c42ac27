"""The price book: built-in data, dates, tiers, names and user overrides. Expected costs are hand-computed nano-USD."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from gateway.billing.accounting import Cost, Rates, TokenUsage
from gateway.billing.prices import PriceBook, format_price_table, mtok_str

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def book() -> PriceBook:
    return PriceBook.load()


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


# --- Sonnet 5.5: every token type, on both sides of the 2026-10-07 cache-read cut ------------------------------------


@pytest.mark.parametrize(
    ("when", "usage", "expected"),
    [
        # Cost(input, output, cache_write, cache_read, uncached); rates $2 / $10 / $2.50 / $4 / $0.20 -> $0.10.
        ("2026-10-07", TokenUsage(input_tokens=1000), Cost(2_000_000, 0, 0, 0, 2_000_000)),
        ("2026-10-07", TokenUsage(output_tokens=1000), Cost(0, 10_000_000, 0, 0, 10_000_000)),
        ("2026-10-07", TokenUsage(cache_write_5m_tokens=1000), Cost(0, 0, 2_500_000, 0, 2_000_000)),
        ("2026-10-07", TokenUsage(cache_write_1h_tokens=1000), Cost(0, 0, 4_000_000, 0, 2_000_000)),
        ("2026-10-07", TokenUsage(cache_read_tokens=1000), Cost(0, 0, 0, 100_000, 2_000_000)),
        ("2026-10-06", TokenUsage(cache_read_tokens=1000), Cost(0, 0, 0, 200_000, 2_000_000)),
        ("2026-10-06", TokenUsage(input_tokens=1000), Cost(2_000_000, 0, 0, 0, 2_000_000)),
        ("2025-01-01", TokenUsage(cache_read_tokens=1), Cost(0, 0, 0, 200, 2000)),
    ],
)
def test_sonnet_55_each_token_type(book: PriceBook, when: str, usage: TokenUsage, expected: Cost) -> None:
    priced = book.price("claude-sonnet-5-5", usage, at(when))
    assert priced.priced and priced.tier is None
    assert priced.cost == expected
    assert priced.source == "builtin 2026-11-25"


@pytest.mark.parametrize(
    ("when", "cache_read_rate"),
    [
        (datetime(2026, 10, 6, 23, 59, 59, tzinfo=UTC), 200),
        (datetime(2026, 10, 7, 0, 0, 0, tzinfo=UTC), 100),
        # 01:00 in UTC+2 is still 2026-10-06 in UTC: the old price.
        (datetime(2026, 10, 7, 1, 0, tzinfo=timezone(timedelta(hours=2))), 200),
        (datetime(2026, 10, 7, 0, 30), 100),  # naive counts as UTC
    ],
)
def test_price_change_uses_the_utc_date(book: PriceBook, when: datetime, cache_read_rate: int) -> None:
    found = book.rates("claude-sonnet-5-5", when)
    assert found is not None
    assert found == (Rates(2000, 10000, 2500, 4000, cache_read_rate), None)


# --- Haiku 5.5 tier: strictly above 100K prompt tokens, then every token at tier rates --------------------------------

BASE_H55 = Rates(input=100, output=500, cache_write_5m=125, cache_write_1h=200, cache_read=10)
TIER_H55 = Rates(input=500, output=2500, cache_write_5m=625, cache_write_1h=1000, cache_read=50)


@pytest.mark.parametrize(
    ("usage", "rates", "tier", "total"),
    [
        # 100000*100 + 1000*500
        (TokenUsage(input_tokens=100_000, output_tokens=1000), BASE_H55, None, 10_500_000),
        # 100001*500 + 1000*2500: output is at the tier rate too
        (TokenUsage(input_tokens=100_001, output_tokens=1000), TIER_H55, "prompt>100000", 52_500_500),
        # cache reads count toward the prompt: 1 + 100000 = 100001 -> 1*500 + 100000*50 + 10*2500
        (TokenUsage(input_tokens=1, output_tokens=10, cache_read_tokens=100_000), TIER_H55, "prompt>100000", 5_025_500),
        # 40000 + 30000 + 20000 + 10000 = 100000 exactly: 4_000_000 + 3_750_000 + 4_000_000 + 100_000
        (TokenUsage(40_000, 0, 30_000, 20_000, 10_000), BASE_H55, None, 11_850_000),
        # one more cache read token: 20_000_000 + 18_750_000 + 20_000_000 + 500_050
        (TokenUsage(40_000, 0, 30_000, 20_000, 10_001), TIER_H55, "prompt>100000", 59_250_050),
    ],
)
def test_haiku_55_tier_edge(book: PriceBook, usage: TokenUsage, rates: Rates, tier: str | None, total: int) -> None:
    priced = book.price("claude-haiku-5-5", usage, NOW)
    assert (priced.rates, priced.tier) == (rates, tier)
    assert priced.cost is not None and priced.cost.total == total


def test_input_rate_is_the_base_tier(book: PriceBook) -> None:
    assert book.input_rate("claude-haiku-5-5", NOW) == 100
    assert book.input_rate("claude-sonnet-5-5", NOW) == 2000
    assert book.input_rate("no-such-model", NOW) is None


# --- names ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "entry_id", "input_rate", "window"),
    [
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5", 1000, 200_000),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5", 3000, 200_000),
        ("claude-opus-4-5-20251101", "claude-opus-4-5", 5000, 200_000),
        ("claude-opus-4-7", "claude-opus-4-8", 5000, 1_000_000),
        ("claude-opus-4-6", "claude-opus-4-8", 5000, 1_000_000),
        ("claude-3-5-haiku-20241022", "claude-3-5-haiku", 800, 200_000),
        ("claude-fable-5-1", "claude-fable-5-1", 10_000, 1_000_000),
    ],
)
def test_dated_ids_and_aliases(book: PriceBook, name: str, entry_id: str, input_rate: int, window: int) -> None:
    entry = book.resolve(name)
    assert entry is not None and entry.id == entry_id
    assert book.input_rate(name, NOW) == input_rate
    assert book.context_window(name) == window


@pytest.mark.parametrize("name", ["claude-sonnet-9", "gpt-4o", "claude-sonnet-5-5-20260101", "", "CLAUDE-SONNET-5-5"])
def test_unknown_model_is_not_priced(book: PriceBook, name: str) -> None:
    priced = book.price(name, TokenUsage(input_tokens=1000, output_tokens=10), NOW)
    assert not priced.priced
    assert (priced.cost, priced.rates, priced.source, priced.tier) == (None, None, None, None)
    assert priced.model == name
    assert book.rates(name, NOW) is None and book.context_window(name) is None


def test_every_model_in_the_reference_is_priced(book: PriceBook) -> None:
    ids = {e.id for e in book.entries}
    assert ids >= {
        "claude-fable-5-1", "claude-fable-5", "claude-opus-5-5", "claude-opus-5", "claude-opus-4-8", "claude-opus-4-5",
        "claude-sonnet-5-5", "claude-sonnet-5", "claude-sonnet-4-6", "claude-sonnet-4-5", "claude-haiku-5-5",
        "claude-haiku-4-5", "claude-3-5-haiku",
    }  # fmt: skip
    assert book.resolve("claude-sonnet-4-5") is not None
    assert book.resolve("claude-3-5-haiku") is not None


# --- user overrides -------------------------------------------------------------------------------------------------

OVERRIDE = """
[[models]]
id = "claude-haiku-4-5"
context_window = 300_000
  [[models.periods]]
  effective_from = 1970-01-01
  input = 2
  output = 8
  cache_write_5m = 2.5
  cache_write_1h = 4
  cache_read = 0.2

[[models]]
id = "local-llama"
aliases = ["llama"]
  [[models.periods]]
  effective_from = 2026-01-01
  input = 0.001
  output = 0.002
  cache_write_5m = 0
  cache_write_1h = 0
  cache_read = 0
"""


def test_user_file_overrides_and_adds(tmp_path: Path) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(OVERRIDE)
    book = PriceBook.load(path)
    # The override takes over the built-in dated id too.
    for name in ("claude-haiku-4-5", "claude-haiku-4-5-20251001"):
        priced = book.price(name, TokenUsage(input_tokens=1000, output_tokens=100), NOW)
        assert priced.cost is not None and priced.cost.total == 2_800_000  # 1000*2000 + 100*8000
        assert priced.source == str(path)
        assert book.context_window(name) == 300_000
    llama = book.price("llama", TokenUsage(input_tokens=1000, output_tokens=1000), NOW)
    assert llama.cost is not None and llama.cost.total == 3000  # 1000*1 + 1000*2
    assert book.price("llama", TokenUsage(input_tokens=1), at("2025-12-31")).priced is False  # before its first period
    assert book.price("claude-sonnet-5-5", TokenUsage(input_tokens=1), NOW).source == "builtin 2026-11-25"
    assert [e.id for e in book.entries].count("claude-haiku-4-5") == 1


def test_missing_user_file_is_fine(tmp_path: Path) -> None:
    assert PriceBook.load(tmp_path / "absent.toml").resolve("claude-sonnet-5-5") is not None


GOOD_PERIOD = (
    "effective_from = 1970-01-01\ninput = 1\noutput = 1\ncache_write_5m = 1\ncache_write_1h = 1\ncache_read = 1"
)


def model(model_id: str = "x", *, change: tuple[str, str] = ("", ""), extra: str = "", periods: int = 1) -> str:
    """One [[models]] entry whose period is GOOD_PERIOD with one line changed."""
    period = GOOD_PERIOD.replace(*change) if change[0] else GOOD_PERIOD
    return f"[[models]]\n{extra}id = '{model_id}'\n" + f"[[models.periods]]\n{period}\n" * periods


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[models]\nid = 'x'", "not valid TOML"),
        (model(change=("cache_read = 1", "")), "'cache_read'"),
        (model(change=("cache_read = 1", "cache_reed = 1")), "cache_reed"),
        (model().replace("models", "model"), "'model'"),
        (model(change=("input = 1", "input = -1")), "'input'"),
        (model(change=("input = 1", 'input = "1"')), "'input'"),
        (model(change=("1970-01-01", "1970-01-01T00:00:00")), "effective_from"),
        ("[[models]]\nid = 'x'", "periods"),
        (model(periods=2), "two periods"),
        (model() + model("y", extra="aliases = ['x']\n"), "used by both"),
        (model(extra="context_window = 'big'\n"), "context_window"),
    ],
)
def test_malformed_user_file_names_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "my-prices.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        PriceBook.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("rate", "ok"),
    [("0.125", True), ("0.001", True), ("12.50", True), ("0.0125", False), ("0.0001", False), ("1.2345", False)],
)
def test_rate_resolution_is_one_nano_per_token(tmp_path: Path, rate: str, ok: bool) -> None:
    path = tmp_path / "prices.toml"
    path.write_text(model("fine-model", change=("cache_read = 1", f"cache_read = {rate}")))
    if ok:
        assert PriceBook.load(path).resolve("fine-model") is not None
        return
    with pytest.raises(ValueError, match="finer than 1 nano-USD") as info:
        PriceBook.load(path)
    assert str(path) in str(info.value) and "'fine-model'" in str(info.value) and "'cache_read'" in str(info.value)


# --- the `agentspace prices` table ----------------------------------------------------------------------------------


def test_table_shows_rates_in_force(book: PriceBook) -> None:
    rows = {row["model"]: row for row in book.table(NOW)}
    sonnet = rows["claude-sonnet-5-5"]
    assert (sonnet["input"], sonnet["output"], sonnet["cache_write_5m"], sonnet["cache_write_1h"]) == (
        "2.00", "10.00", "2.50", "4.00",
    )  # fmt: skip
    assert (sonnet["cache_read"], sonnet["effective_from"], sonnet["context_window"]) == (
        "0.10",
        "2026-10-07",
        1_000_000,
    )
    assert {row["model"]: row for row in book.table(at("2026-10-06"))}["claude-sonnet-5-5"]["cache_read"] == "0.20"
    haiku = rows["claude-haiku-5-5"]
    assert haiku["cache_write_5m"] == "0.125"
    assert haiku["tiers"] == [
        {"tier": "prompt>100000", "input": "0.50", "output": "2.50", "cache_write_5m": "0.625",
         "cache_write_1h": "1.00", "cache_read": "0.05"}
    ]  # fmt: skip
    assert rows["claude-haiku-4-5"]["aliases"] == ["claude-haiku-4-5-20251001"]
    assert "retires 2026-11-30" in str(rows["claude-sonnet-4-5"]["notes"])


def test_format_price_table(book: PriceBook) -> None:
    text = format_price_table(book.table(NOW))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["model", "input", "output"]
    sonnet = next(line for line in lines if line.startswith("claude-sonnet-5-5 "))
    assert sonnet.split()[1:6] == ["2.00", "10.00", "2.50", "4.00", "0.10"]
    assert any(line.strip().startswith("prompt>100000") for line in lines)
    assert "builtin 2026-11-25" in lines[-1]


@pytest.mark.parametrize(
    ("nano", "text"), [(2000, "2.00"), (125, "0.125"), (10, "0.01"), (12500, "12.50"), (0, "0.00")]
)
def test_mtok_str(nano: int, text: str) -> None:
    assert mtok_str(nano) == text
