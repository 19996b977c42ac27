"""Server tools' prices are data with effective dates, like token prices: parsed strictly, priced per use."""

from __future__ import annotations

from datetime import date

import pytest

from gateway.billing.server_tools import parse_server_tools, server_tool_cost

PRICES = """
[[server_tools]]
name = "web_search"
  [[server_tools.periods]]
  effective_from = 1970-01-01
  usd_per_1000 = 10
  [[server_tools.periods]]
  effective_from = 2026-12-01
  usd_per_1000 = 12.5
"""


def test_priced_per_search_at_the_rate_of_the_day() -> None:
    prices = parse_server_tools(PRICES, "prices.toml")
    counts = {"web_search_requests": 3, "web_fetch_requests": 5}
    assert server_tool_cost(prices, counts, date(2026, 11, 30)) == 3 * 10_000_000
    assert server_tool_cost(prices, counts, date(2026, 12, 1)) == 3 * 12_500_000
    assert server_tool_cost(prices, {}, date(2026, 12, 1)) == 0


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('[[server_tools]]\nname = "code_execution"\n', "'name' must be one of"),
        ('[[server_tools]]\nname = "web_search"\n', "needs at least one"),
        ('[[server_tools]]\nname = "web_search"\n[[server_tools.periods]]\neffective_from = 2026-01-01\n', "expected"),
        (
            '[[server_tools]]\nname = "web_search"\n[[server_tools.periods]]\neffective_from = 2026-01-01\n'
            "usd_per_1000 = -1\n",
            "non-negative",
        ),
        (
            '[[server_tools]]\nname = "web_search"\n[[server_tools.periods]]\neffective_from = 2026-01-01\n'
            "usd_per_1000 = 0.0000001\n",
            "whole number of nano-USD",
        ),
    ],
)
def test_bad_entries_are_refused_with_where(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_server_tools(text, "prices.toml")
