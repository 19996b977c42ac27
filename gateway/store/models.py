"""The ORM tables. Schema changes go through alembic migrations; tests/test_migrations.py proves the two agree."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC on every database, so SQLite's text dates sort and group like PostgreSQL's."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class ChatSession(Base):
    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(String(200), default="")
    model: Mapped[str] = mapped_column(String(128))
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # For sessions that stateless HTTP traffic writes: the hash of the conversation as its client will send it next
    # (docs/HTTP_API.md), so a request extending it finds it in one index lookup. NULL once anything else writes.
    tail_hash: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        # session.list pages by (updated_at, id) newest first, optionally within one agent.
        Index("ix_sessions_agent_updated", "agent_id", "updated_at", "id"),
        Index("ix_sessions_updated", "updated_at", "id"),
        Index("ix_sessions_tail_hash", "tail_hash"),
    )


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(36), ForeignKey("sessions.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(16))
    # The content blocks exactly as the API returned them (thinking with signature), so history replays as-is.
    content: Mapped[list[Any]] = mapped_column(JSON)
    text: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[str | None] = mapped_column(String(128))
    # user: complete. assistant: streaming -> complete | cancelled | failed | interrupted.
    status: Mapped[str] = mapped_column(String(16))
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # "message", or "summary": what the model wrote when the session was compacted (docs/COMPACTION.md). Sent in
    # place of the messages it covers, which keep their rows with `compacted_by` naming it and are no longer sent.
    kind: Mapped[str] = mapped_column(String(16), default="message", server_default="message")
    compacted_by: Mapped[str | None] = mapped_column(String(36))

    __table_args__ = (
        Index("ix_messages_session_seq", "session_id", "seq", unique=True),
        Index("ix_messages_idempotency_key", "idempotency_key", unique=True),
        Index("ix_messages_status", "status"),
    )


class UsageRecord(Base):
    """One row per upstream request, keyed by our own UUID. No foreign keys: usage outlives deleted sessions."""

    __tablename__ = "usage_records"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(36))
    message_id: Mapped[str | None] = mapped_column(String(36))
    agent_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_5m_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_1h_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # Costs in nano-USD (1e-9 USD); NULL when the model has no known price.
    input_cost: Mapped[int | None] = mapped_column(BigInteger)
    output_cost: Mapped[int | None] = mapped_column(BigInteger)
    cache_write_cost: Mapped[int | None] = mapped_column(BigInteger)
    cache_read_cost: Mapped[int | None] = mapped_column(BigInteger)
    total_cost: Mapped[int | None] = mapped_column(BigInteger)
    uncached_cost: Mapped[int | None] = mapped_column(BigInteger)
    # The rates this row was priced with (nano-USD per token), so later price changes never rewrite history.
    rate_input: Mapped[int | None] = mapped_column(BigInteger)
    rate_output: Mapped[int | None] = mapped_column(BigInteger)
    rate_cache_write_5m: Mapped[int | None] = mapped_column(BigInteger)
    rate_cache_write_1h: Mapped[int | None] = mapped_column(BigInteger)
    rate_cache_read: Mapped[int | None] = mapped_column(BigInteger)
    price_source: Mapped[str | None] = mapped_column(String(300))
    price_tier: Mapped[str | None] = mapped_column(String(64))
    estimated_input_tokens: Mapped[int | None] = mapped_column(BigInteger)
    # Anthropic's id for the message (msg_...), to match our rows with their console; unique, so one upstream
    # request can never be counted twice.
    upstream_message_id: Mapped[str | None] = mapped_column(String(128))
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    first_token_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The gateway key (api_keys.id) the request came with; NULL for the single gateway token or no credential.
    key_id: Mapped[str | None] = mapped_column(String(36))
    # Which model request of its turn this was (1, 2, ... in a tool loop); NULL on rows from before tool loops.
    step: Mapped[int | None] = mapped_column(Integer)
    # Anthropic's server-side tools (usage.server_tool_use): counted per request; web searches are priced per search
    # (`server_tool_cost`, nano-USD, included in total_cost and uncached_cost), web fetches cost only their tokens.
    web_search_requests: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    web_fetch_requests: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    server_tool_cost: Mapped[int | None] = mapped_column(BigInteger)
    # Why the request was made: "chat" (a turn's, or the HTTP API's) or "compaction" (a session's summary).
    purpose: Mapped[str] = mapped_column(String(16), default="chat", server_default="chat")
    estimated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())  # see docs/SQL.md
    estimated_output_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    estimated_cost: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    __table_args__ = (
        Index("ix_usage_records_created_at", "created_at"),
        Index("ix_usage_records_key_created", "key_id", "created_at"),
        Index("ix_usage_records_model_created", "model", "created_at"),
        Index("ix_usage_records_session_created", "session_id", "created_at"),
        Index("ix_usage_records_agent_created", "agent_id", "created_at"),
        Index("ix_usage_records_upstream_message_id", "upstream_message_id", unique=True),
    )


class BudgetReservation(Base):
    """A request in flight, held against one holder's caps until its usage row counts instead (docs/BUDGETS.md)."""

    __tablename__ = "budget_reservations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    holder: Mapped[str] = mapped_column(String(120))  # "agent:<id>" or "key:<id>"
    amount: Mapped[int] = mapped_column(BigInteger)  # the request's worst case, nano-USD
    owner: Mapped[str] = mapped_column(String(36))  # the gateway process holding it (random per process)
    usage_id: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()  # a lease its live process renews

    __table_args__ = (Index("ix_budget_reservations_holder_expires", "holder", "expires_at"), Index(
        "ix_budget_reservations_owner", "owner"))  # fmt: skip


class ApiKey(Base):
    """A named gateway key (`agentspace token create --name`). Only its SHA-256 is kept; revoked keys stay, so usage
    rows keep naming them."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    # The key's first characters, to tell keys apart in a list without showing them.
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    # Spend caps in nano-USD per UTC day and calendar month; NULL: no cap.
    daily_cap: Mapped[int | None] = mapped_column(BigInteger)
    monthly_cap: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_api_keys_name", "name", unique=True),
        Index("ix_api_keys_key_hash", "key_hash", unique=True),
    )


class UsageDaily(Base):
    """Exact integer sums of `usage_records` per UTC day, agent and model, so reports over millions of rows read a few
    thousand. Kept by database triggers on `usage_records` (insert, update, delete) in the writer's own transaction,
    so it is right whoever writes, the gateway or a person with sqlite3/psql. Nothing in Python writes it."""

    __tablename__ = "usage_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    agent_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    request_count: Mapped[int] = mapped_column(BigInteger, default=0)
    unpriced_requests: Mapped[int] = mapped_column(BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_5m_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_1h_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    # Nano-USD over the priced rows only (unpriced rows have no cost; `unpriced_requests` counts them).
    input_cost: Mapped[int] = mapped_column(BigInteger, default=0)
    output_cost: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_cost: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_cost: Mapped[int] = mapped_column(BigInteger, default=0)
    total_cost: Mapped[int] = mapped_column(BigInteger, default=0)
    uncached_cost: Mapped[int] = mapped_column(BigInteger, default=0)
    estimated_requests: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    estimated_output_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    estimated_cost: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    __table_args__ = (Index("ix_usage_daily_agent_day", "agent_id", "day"),)


class TokenCalibration(Base):
    """Per model: how the upstream's reported input (and output) tokens compare with our local count, to correct it."""

    __tablename__ = "token_calibration"

    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    samples: Mapped[int] = mapped_column(BigInteger, default=0)
    estimated_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reported_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    output_samples: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    output_estimated_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    output_reported_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class ToolCall(Base):
    """One tool_use the model made, from the call to its result. The replayable `tool_result` message (role user) is
    rendered from these rows (store/tool_calls.py), so history holds a result for every call at every moment: an
    unfinished call's result says it was interrupted."""

    __tablename__ = "tool_calls"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    session_id: Mapped[str] = mapped_column(String(36), ForeignKey("sessions.id", ondelete="CASCADE"))
    # The assistant message holding the tool_use, and the user message holding its tool_result.
    message_id: Mapped[str] = mapped_column(String(36), ForeignKey("messages.id", ondelete="CASCADE"))
    result_message_id: Mapped[str] = mapped_column(String(36), ForeignKey("messages.id", ondelete="CASCADE"))
    tool_use_id: Mapped[str] = mapped_column(String(128))
    step: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)  # its place among the message's tool_use blocks
    name: Mapped[str] = mapped_column(String(128))
    input: Mapped[Any] = mapped_column(JSON)
    executor: Mapped[str] = mapped_column(String(16))  # builtin | mcp | client
    policy: Mapped[str] = mapped_column(String(8))  # allow | ask | deny, as configured
    # pending (awaiting approval) -> approved -> running -> done | error; or denied; or interrupted.
    status: Mapped[str] = mapped_column(String(16))
    decision: Mapped[str | None] = mapped_column(String(16))  # allow_once | allow_session | deny | expired
    # The tool_result content as sent to the model (SQL NULL until there is one).
    result: Mapped[Any | None] = mapped_column(JSON(none_as_null=True))
    is_error: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[datetime | None] = mapped_column()  # an approval's deadline
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    duration_ms: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_tool_calls_session_tool_use", "session_id", "tool_use_id", unique=True),
        Index("ix_tool_calls_result_message", "result_message_id", "position"),
        Index("ix_tool_calls_status", "status"),
    )
