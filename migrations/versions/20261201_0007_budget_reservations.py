"""budget reservations in SQL: every process sharing the database sees every request in flight

A budget check adds the worst case of the requests still in flight to the spend so far. Those reservations were kept
in each process's memory, so N processes on one PostgreSQL could together pass a cap by N-1 in-flight worst cases.
Now each is a row (one per holder: the agent's caps, the key's), written in the same transaction as the check, under
a per-holder lock (PostgreSQL advisory transaction lock; SQLite's one writer). A row names the process that holds it
and a lease: a process that dies stops renewing, and its rows stop counting when the lease runs out. A row may name
the usage row of its request (`usage_id`): what that row already counts is not counted twice.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "budget_reservations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("holder", sa.String(length=120), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("owner", sa.String(length=36), nullable=False),
        sa.Column("usage_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_budget_reservations")),
    )
    op.create_index("ix_budget_reservations_holder_expires", "budget_reservations", ["holder", "expires_at"])
    op.create_index("ix_budget_reservations_owner", "budget_reservations", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_budget_reservations_owner", table_name="budget_reservations")
    op.drop_index("ix_budget_reservations_holder_expires", table_name="budget_reservations")
    op.drop_table("budget_reservations")
