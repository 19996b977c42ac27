"""A usage row as a turn builds it: a plain dataclass with the columns of `usage_records`, not the ORM's UsageRecord.

Every model request builds one or two (its provisional row, its final row), and SQLAlchemy's instrumented
constructor made that 5.8 % of the gateway's CPU in the `turns` benchmark (issue 15). The store writes it with Core
statements that read its attributes by column name (upserts.py), so it needs no ORM state; a test keeps its fields
and the table's columns the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(slots=True)
class UsageRow:
    id: str
    session_id: str
    message_id: str | None
    agent_id: str
    model: str
    status: str
    created_at: datetime
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_5m_tokens: int = 0
    cache_write_1h_tokens: int = 0
    cache_read_tokens: int = 0
    input_cost: int | None = None
    output_cost: int | None = None
    cache_write_cost: int | None = None
    cache_read_cost: int | None = None
    total_cost: int | None = None
    uncached_cost: int | None = None
    rate_input: int | None = None
    rate_output: int | None = None
    rate_cache_write_5m: int | None = None
    rate_cache_write_1h: int | None = None
    rate_cache_read: int | None = None
    price_source: str | None = None
    price_tier: str | None = None
    estimated_input_tokens: int | None = None
    upstream_message_id: str | None = None
    duration_ms: int = 0
    first_token_ms: int | None = None
    key_id: str | None = None
    step: int | None = None
    web_search_requests: int = 0
    web_fetch_requests: int = 0
    server_tool_cost: int | None = None
    purpose: str = "chat"
    estimated: bool = False
    estimated_output_tokens: int = 0
    estimated_cost: int = 0
