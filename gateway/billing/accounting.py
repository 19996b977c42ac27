"""Token usage and exact cost arithmetic.

Money is integer nano-USD (1e-9 USD) everywhere: every published Claude rate is a whole number of nano-USD per token,
so integer arithmetic is exact and sums of many rows never drift. Floats appear only in `nano_to_usd`, at the edge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal

_NANO_PLACES = Decimal("0.000000001")


def _field(obj: object, name: str) -> object:
    # The SDK hands us pydantic models; stored rows and tests hand us dicts. Both spell fields the same way.
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _count(obj: object, name: str) -> int:
    value = _field(obj, name)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"usage field {name} must be an integer, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class TokenUsage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0

    def __post_init__(self) -> None:
        # A negative count would quietly produce a negative cost; refuse it where it enters.
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must not be negative")

    @property
    def cache_creation_input_tokens(self) -> int:
        return self.cache_write_5m_tokens + self.cache_write_1h_tokens

    @property
    def prompt_tokens(self) -> int:
        """The whole prompt: what tiers switch on and what the context window holds."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_tokens

    @property
    def total_tokens(self) -> int:
        """Every token the request was billed for: the whole prompt (input, cache writes, cache reads) and the output.
        What the original AgentSpace protocol's `totalTokens` counted (its AI SDK summed the same four)."""
        return self.prompt_tokens + self.output_tokens

    @classmethod
    def from_api(cls, usage: object) -> TokenUsage:
        """From an `anthropic.types.Usage` / `MessageDeltaUsage` or an equivalent dict."""
        written = _count(usage, "cache_creation_input_tokens")
        breakdown = _field(usage, "cache_creation")
        if breakdown is None:
            # Without a TTL breakdown the API's default TTL (5 minutes) is the only honest reading.
            w5m, w1h = written, 0
        else:
            w5m = _count(breakdown, "ephemeral_5m_input_tokens")
            w1h = _count(breakdown, "ephemeral_1h_input_tokens")
            # If the total ever exceeds the breakdown, bill the rest at the 5m rate rather than drop tokens.
            w5m += max(0, written - w5m - w1h)
        return cls(
            input_tokens=_count(usage, "input_tokens"),
            output_tokens=_count(usage, "output_tokens"),
            cache_write_5m_tokens=w5m,
            cache_write_1h_tokens=w1h,
            cache_read_tokens=_count(usage, "cache_read_input_tokens"),
        )

    def plus(self, other: TokenUsage) -> TokenUsage:
        """Two requests' usage together (a turn of several model requests)."""
        return TokenUsage(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def merged(self, later: TokenUsage) -> TokenUsage:
        """Combine `message_start` usage (self) with `message_delta` usage (later).

        The delta's counts are cumulative, so they replace rather than add. Its output count is always authoritative;
        its input/cache counts only when non-zero, because a delta that does not carry them reads as zero.
        """
        w5m, w1h = self.cache_write_5m_tokens, self.cache_write_1h_tokens
        # message_delta carries no TTL breakdown, so from_api put its whole write count in 5m; keep the start's
        # split when the totals agree, or a 1h write would be double counted (and mispriced).
        if later.cache_creation_input_tokens and later.cache_creation_input_tokens != self.cache_creation_input_tokens:
            w5m, w1h = later.cache_write_5m_tokens, later.cache_write_1h_tokens
        return TokenUsage(
            input_tokens=later.input_tokens or self.input_tokens,
            output_tokens=later.output_tokens,
            cache_write_5m_tokens=w5m,
            cache_write_1h_tokens=w1h,
            cache_read_tokens=later.cache_read_tokens or self.cache_read_tokens,
        )


@dataclass(frozen=True, slots=True)
class Rates:
    """Nano-USD per token (= USD per million tokens x 1000)."""

    input: int
    output: int
    cache_write_5m: int
    cache_write_1h: int
    cache_read: int


@dataclass(frozen=True, slots=True)
class Cost:
    """Nano-USD."""

    input: int
    output: int
    cache_write: int
    cache_read: int
    uncached: int
    server_tool: int = 0  # Anthropic's server tools billed per use (web search): in total and in uncached alike

    @property
    def total(self) -> int:
        return self.input + self.output + self.cache_write + self.cache_read + self.server_tool

    def plus(self, other: Cost) -> Cost:
        return Cost(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def saved(self) -> int:
        """What prompt caching saved; negative when cache writes were not (yet) repaid by reads."""
        return self.uncached - self.total


@dataclass(frozen=True, slots=True)
class Priced:
    model: str
    usage: TokenUsage
    rates: Rates | None
    cost: Cost | None
    source: str | None
    tier: str | None

    @property
    def priced(self) -> bool:
        return self.cost is not None


def compute_cost(usage: TokenUsage, rates: Rates, server_tool: int = 0) -> Cost:
    return Cost(
        input=usage.input_tokens * rates.input,
        output=usage.output_tokens * rates.output,
        cache_write=usage.cache_write_5m_tokens * rates.cache_write_5m
        + usage.cache_write_1h_tokens * rates.cache_write_1h,
        cache_read=usage.cache_read_tokens * rates.cache_read,
        # Same rates (and so the same tier): without caching the prompt would have been just as long.
        uncached=usage.prompt_tokens * rates.input + usage.output_tokens * rates.output + server_tool,
        server_tool=server_tool,
    )


def nano_to_usd(nano: int | None) -> float | None:
    """For JSON and display only; never add these floats up."""
    if nano is None:
        return None
    return round(nano / 1e9, 9)


def usd_str(nano: int | None) -> str:
    """Exact dollars with all nine decimals, e.g. "0.000123450"; "n/a" when unpriced."""
    if nano is None:
        return "n/a"
    return format(Decimal(nano).scaleb(-9).quantize(_NANO_PLACES), "f")  # "f": never "1E-9"
