"""gateway keys: named keys (stored hashed), the key on each usage row, and the tail hash of HTTP sessions

`api_keys` holds the keys `agentspace token create --name` makes (SHA-256 only), with their spend caps.
`usage_records.key_id` names the key each request came with. `sessions.tail_hash` finds the session a stateless
HTTP request continues (docs/HTTP_API.md).

Columns are added with plain ALTER TABLE, never a batch that recreates `usage_records`: on SQLite that would drop
the usage_daily triggers of revision 0002.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 07:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_used_at", sa.DateTime(), nullable=True),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
        sa.Column("daily_cap", sa.BigInteger(), nullable=True),
        sa.Column("monthly_cap", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_index("ix_api_keys_name", "api_keys", ["name"], unique=True)
    op.create_index("ix_api_keys_key_hash", "api_keys", ["key_hash"], unique=True)
    op.add_column("usage_records", sa.Column("key_id", sa.String(length=36), nullable=True))
    op.create_index("ix_usage_records_key_created", "usage_records", ["key_id", "created_at"], unique=False)
    op.add_column("sessions", sa.Column("tail_hash", sa.String(length=64), nullable=True))
    op.create_index("ix_sessions_tail_hash", "sessions", ["tail_hash"], unique=False)


def downgrade() -> None:
    # SQLite (3.35+) drops a column in place too, so the triggers on usage_records stay.
    op.drop_index("ix_sessions_tail_hash", table_name="sessions")
    op.drop_column("sessions", "tail_hash")
    op.drop_index("ix_usage_records_key_created", table_name="usage_records")
    op.drop_column("usage_records", "key_id")
    op.drop_index("ix_api_keys_key_hash", table_name="api_keys")
    op.drop_index("ix_api_keys_name", table_name="api_keys")
    op.drop_table("api_keys")
