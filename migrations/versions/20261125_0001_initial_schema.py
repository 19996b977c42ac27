"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-25 19:24:35.372982
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Views for people with sqlite3/psql: integer nano-USD summed first, turned into USD once, at the edge.
_TOKEN_SUMS = """
    COUNT(*) AS request_count,
    SUM(input_tokens) AS input_tokens,
    SUM(output_tokens) AS output_tokens,
    SUM(cache_write_5m_tokens + cache_write_1h_tokens) AS cache_creation_input_tokens,
    SUM(cache_read_tokens) AS cache_read_input_tokens,
    SUM(CASE WHEN total_cost IS NULL THEN 1 ELSE 0 END) AS unpriced_requests,
    SUM(total_cost) / 1e9 AS total_cost_usd,
    SUM(uncached_cost - total_cost) / 1e9 AS saved_cost_usd"""


def _views(day_expr: str) -> dict[str, str]:
    return {
        "usage_by_model": f"SELECT model, {_TOKEN_SUMS} FROM usage_records GROUP BY model",
        "usage_by_day": f"SELECT {day_expr} AS day, model, {_TOKEN_SUMS} FROM usage_records GROUP BY {day_expr}, model",
        "usage_by_session": (
            f"SELECT session_id, agent_id, MIN(created_at) AS first_request_at, MAX(created_at) AS last_request_at,"
            f" {_TOKEN_SUMS} FROM usage_records GROUP BY session_id, agent_id"
        ),
    }


def _day_expr() -> str:
    return "date(created_at)" if op.get_bind().dialect.name == "sqlite" else "CAST(created_at AS DATE)"


def upgrade() -> None:

    op.create_table(
        "sessions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("message_count", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sessions")),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index("ix_sessions_agent_updated", ["agent_id", "updated_at", "id"], unique=False)
        batch_op.create_index("ix_sessions_updated", ["updated_at", "id"], unique=False)

    op.create_table(
        "token_calibration",
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.Column("estimated_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reported_tokens", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("model", name=op.f("pk_token_calibration")),
    )
    op.create_table(
        "usage_records",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=True),
        sa.Column("agent_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_5m_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_1h_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("input_cost", sa.BigInteger(), nullable=True),
        sa.Column("output_cost", sa.BigInteger(), nullable=True),
        sa.Column("cache_write_cost", sa.BigInteger(), nullable=True),
        sa.Column("cache_read_cost", sa.BigInteger(), nullable=True),
        sa.Column("total_cost", sa.BigInteger(), nullable=True),
        sa.Column("uncached_cost", sa.BigInteger(), nullable=True),
        sa.Column("rate_input", sa.BigInteger(), nullable=True),
        sa.Column("rate_output", sa.BigInteger(), nullable=True),
        sa.Column("rate_cache_write_5m", sa.BigInteger(), nullable=True),
        sa.Column("rate_cache_write_1h", sa.BigInteger(), nullable=True),
        sa.Column("rate_cache_read", sa.BigInteger(), nullable=True),
        sa.Column("price_source", sa.String(length=300), nullable=True),
        sa.Column("price_tier", sa.String(length=64), nullable=True),
        sa.Column("estimated_input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("first_token_ms", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
    )
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.create_index("ix_usage_records_agent_created", ["agent_id", "created_at"], unique=False)
        batch_op.create_index("ix_usage_records_created_at", ["created_at"], unique=False)
        batch_op.create_index("ix_usage_records_model_created", ["model", "created_at"], unique=False)
        batch_op.create_index("ix_usage_records_session_created", ["session_id", "created_at"], unique=False)

    op.create_table(
        "messages",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("content", sa.JSON(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("stop_reason", sa.String(length=32), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("idempotency_key", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_messages_session_id_sessions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_messages")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index("ix_messages_idempotency_key", ["idempotency_key"], unique=True)
        batch_op.create_index("ix_messages_session_seq", ["session_id", "seq"], unique=True)
        batch_op.create_index("ix_messages_status", ["status"], unique=False)

    for name, query in _views(_day_expr()).items():
        op.execute(f"CREATE VIEW {name} AS {query}")


def downgrade() -> None:
    for name in _views(_day_expr()):
        op.execute(f"DROP VIEW IF EXISTS {name}")

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_status")
        batch_op.drop_index("ix_messages_session_seq")
        batch_op.drop_index("ix_messages_idempotency_key")

    op.drop_table("messages")
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_records_session_created")
        batch_op.drop_index("ix_usage_records_model_created")
        batch_op.drop_index("ix_usage_records_created_at")
        batch_op.drop_index("ix_usage_records_agent_created")

    op.drop_table("usage_records")
    op.drop_table("token_calibration")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_sessions_updated")
        batch_op.drop_index("ix_sessions_agent_updated")

    op.drop_table("sessions")
