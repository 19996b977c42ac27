"""compaction: a message's kind and the summary that compacted it; a usage row's purpose

A session that outgrows its window is compacted: the model summarises its older part, and the summary is stored as
a message of its own kind (`kind = 'summary'`). The older messages stay, marked with the summary that covers them
(`compacted_by`), and are no longer sent. The compaction's model request is a usage row like any other, with
`purpose = 'compaction'` (every other request: `'chat'`). Plain ADD COLUMN on both databases, as in 0005: a batch
rebuild of usage_records would drop 0002's triggers on SQLite.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("kind", sa.String(length=16), server_default="message", nullable=False))
    op.add_column("messages", sa.Column("compacted_by", sa.String(length=36), nullable=True))
    op.add_column("usage_records", sa.Column("purpose", sa.String(length=16), server_default="chat", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("usage_records", recreate="never") as batch:
        batch.drop_column("purpose")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("compacted_by")
        batch.drop_column("kind")
