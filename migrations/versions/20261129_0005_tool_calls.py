"""tool calls: one row per tool_use, usage rows per step, server tool use counted and priced

A turn may now make several model requests (a tool loop). Each request keeps its own usage row, numbered by `step`;
each tool call has a `tool_calls` row from the call to its result. Columns are only added to `usage_records` (SQLite's
ALTER TABLE ADD COLUMN, no table rebuild), so the usage_daily triggers of 0002 stay in place.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 06:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tool_calls",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("result_message_id", sa.String(length=36), nullable=False),
        sa.Column("tool_use_id", sa.String(length=128), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("input", sa.JSON(), nullable=False),
        sa.Column("executor", sa.String(length=16), nullable=False),
        sa.Column("policy", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("decision", sa.String(length=16), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("is_error", sa.Boolean(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["message_id"], ["messages.id"], name=op.f("fk_tool_calls_message_id_messages"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["result_message_id"],
            ["messages.id"],
            name=op.f("fk_tool_calls_result_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["session_id"], ["sessions.id"], name=op.f("fk_tool_calls_session_id_sessions"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tool_calls")),
    )
    op.create_index("ix_tool_calls_session_tool_use", "tool_calls", ["session_id", "tool_use_id"], unique=True)
    op.create_index("ix_tool_calls_result_message", "tool_calls", ["result_message_id", "position"], unique=False)
    op.create_index("ix_tool_calls_status", "tool_calls", ["status"], unique=False)
    # Plain ADD COLUMN on both databases: a batch rebuild of usage_records would drop 0002's triggers on SQLite.
    op.add_column("usage_records", sa.Column("step", sa.Integer(), nullable=True))
    op.add_column("usage_records", sa.Column("web_search_requests", sa.Integer(), server_default="0", nullable=False))
    op.add_column("usage_records", sa.Column("web_fetch_requests", sa.Integer(), server_default="0", nullable=False))
    op.add_column("usage_records", sa.Column("server_tool_cost", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records", recreate="never") as batch:
        batch.drop_column("server_tool_cost")
        batch.drop_column("web_fetch_requests")
        batch.drop_column("web_search_requests")
        batch.drop_column("step")
    op.drop_index("ix_tool_calls_status", table_name="tool_calls")
    op.drop_index("ix_tool_calls_result_message", table_name="tool_calls")
    op.drop_index("ix_tool_calls_session_tool_use", table_name="tool_calls")
    op.drop_table("tool_calls")
