"""usage_daily follows TRUNCATE usage_records (PostgreSQL)

Row triggers do not fire on TRUNCATE, so `TRUNCATE usage_records` would leave the rollup holding sums of rows that
no longer exist. A statement trigger empties it too. SQLite has no TRUNCATE (its `DELETE FROM` fires row triggers),
so this revision changes nothing there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 20:55:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _postgresql() -> bool:
    return bool(op.get_bind().dialect.name == "postgresql")


def upgrade() -> None:
    if not _postgresql():
        return
    op.execute(
        "CREATE FUNCTION usage_daily_truncate() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        "BEGIN\n  DELETE FROM usage_daily;\n  RETURN NULL;\nEND\n$$"
    )
    op.execute(
        "CREATE TRIGGER usage_daily_after_truncate AFTER TRUNCATE ON usage_records"
        " FOR EACH STATEMENT EXECUTE FUNCTION usage_daily_truncate()"
    )


def downgrade() -> None:
    if not _postgresql():
        return
    op.execute("DROP TRIGGER IF EXISTS usage_daily_after_truncate ON usage_records")
    op.execute("DROP FUNCTION IF EXISTS usage_daily_truncate()")
