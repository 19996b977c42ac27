"""usage rollup: usage_daily kept by triggers, readable views over it, upstream message ids

Reports over millions of usage rows must answer in milliseconds. `usage_daily` holds exact integer sums of
`usage_records` per UTC day, agent and model; triggers on `usage_records` keep it in the writer's own transaction, so
it stays equal to SQL over `usage_records` whoever writes (the gateway, a backfill, a person pruning old rows).
`usage_by_model` and `usage_by_day` now read it; `usage_by_session` still reads `usage_records` (by session index).

Careful in later migrations: on SQLite, a batch operation that recreates `usage_records` drops these triggers. Such a
migration must create them again (`_create_triggers`); tests/test_usage_sql.py fails if they are missing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 19:41:39.033265
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = ("day", "agent_id", "model")

# usage_daily column -> its value for one usage_records row, written for the row alias "{r}" (NEW or OLD).
# Costs of unpriced rows are NULL and count as 0; `uncached_cost` is summed over priced rows only, as reports do.
ROW_VALUES = {
    "request_count": "1",
    "unpriced_requests": "CASE WHEN {r}.total_cost IS NULL THEN 1 ELSE 0 END",
    "input_tokens": "{r}.input_tokens",
    "output_tokens": "{r}.output_tokens",
    "cache_write_5m_tokens": "{r}.cache_write_5m_tokens",
    "cache_write_1h_tokens": "{r}.cache_write_1h_tokens",
    "cache_read_tokens": "{r}.cache_read_tokens",
    "input_cost": "COALESCE({r}.input_cost, 0)",
    "output_cost": "COALESCE({r}.output_cost, 0)",
    "cache_write_cost": "COALESCE({r}.cache_write_cost, 0)",
    "cache_read_cost": "COALESCE({r}.cache_read_cost, 0)",
    "total_cost": "COALESCE({r}.total_cost, 0)",
    "uncached_cost": "CASE WHEN {r}.total_cost IS NULL THEN 0 ELSE COALESCE({r}.uncached_cost, 0) END",
}
TRIGGERS = ("usage_daily_after_insert", "usage_daily_after_delete", "usage_daily_after_update")


def _sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def _day(column: str) -> str:
    return f"date({column})" if _sqlite() else f"CAST({column} AS DATE)"


def _add_row(r: str) -> str:
    """Add one usage_records row (alias r) to its usage_daily group."""
    columns = ", ".join((*KEY, *ROW_VALUES))
    values = ", ".join((_day(f"{r}.created_at"), f"{r}.agent_id", f"{r}.model"))
    values += ", " + ", ".join(v.format(r=r) for v in ROW_VALUES.values())
    table = "" if _sqlite() else "usage_daily."
    updates = ", ".join(f"{c} = {table}{c} + excluded.{c}" for c in ROW_VALUES)
    return (
        f"INSERT INTO usage_daily ({columns}) VALUES ({values}) ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET {updates}"
    )


def _remove_row(r: str) -> list[str]:
    """Take one usage_records row (alias r) out of its group, and drop the group once it is empty."""
    where = f"day = {_day(f'{r}.created_at')} AND agent_id = {r}.agent_id AND model = {r}.model"
    updates = ", ".join(f"{c} = {c} - ({v.format(r=r)})" for c, v in ROW_VALUES.items())
    return [
        f"UPDATE usage_daily SET {updates} WHERE {where}",
        f"DELETE FROM usage_daily WHERE {where} AND request_count = 0",
    ]


def _create_triggers() -> None:
    if _sqlite():
        body = {
            "usage_daily_after_insert": ("INSERT", [_add_row("NEW")]),
            "usage_daily_after_delete": ("DELETE", _remove_row("OLD")),
            "usage_daily_after_update": ("UPDATE", [*_remove_row("OLD"), _add_row("NEW")]),
        }
        for name, (event, statements) in body.items():
            steps = "".join(f"  {s};\n" for s in statements)
            op.execute(f"CREATE TRIGGER {name} AFTER {event} ON usage_records FOR EACH ROW\nBEGIN\n{steps}END")
        return
    removal = "".join(f"    {s};\n" for s in _remove_row("OLD"))
    op.execute(
        "CREATE FUNCTION usage_daily_sync() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n"
        f"  IF TG_OP IN ('DELETE', 'UPDATE') THEN\n{removal}  END IF;\n"
        f"  IF TG_OP IN ('INSERT', 'UPDATE') THEN\n    {_add_row('NEW')};\n  END IF;\n"
        "  RETURN NULL;\nEND\n$$"
    )
    for name, event in zip(TRIGGERS, ("INSERT", "DELETE", "UPDATE"), strict=True):
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON usage_records FOR EACH ROW EXECUTE FUNCTION usage_daily_sync()"
        )


def _drop_triggers() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + ("" if _sqlite() else " ON usage_records"))
    if not _sqlite():
        op.execute("DROP FUNCTION IF EXISTS usage_daily_sync()")


def _backfill() -> None:
    columns = ", ".join((*KEY, *ROW_VALUES))
    day = _day("r.created_at")
    sums = ", ".join("COUNT(*)" if c == "request_count" else f"SUM({v.format(r='r')})" for c, v in ROW_VALUES.items())
    op.execute(
        f"INSERT INTO usage_daily ({columns}) SELECT {day}, r.agent_id, r.model, {sums} "
        f"FROM usage_records r GROUP BY {day}, r.agent_id, r.model"
    )


def _usd(expr: str) -> str:
    return f"ROUND(({expr}) / 1e9, 9)"


def _view_sums(value: Callable[[str], str]) -> str:
    """Readable columns: token counts as the API names them, costs in USD (integer nano-USD summed, divided once).
    `value` gives the SQL for one usage_daily column: the column itself, or its per-row value over usage_records."""

    def total(column: str) -> str:
        return f"SUM({value(column)})"

    return f"""
    {total("request_count")} AS request_count,
    {total("unpriced_requests")} AS unpriced_requests,
    {total("input_tokens")} AS input_tokens,
    {total("output_tokens")} AS output_tokens,
    {total("cache_write_5m_tokens")} + {total("cache_write_1h_tokens")} AS cache_creation_input_tokens,
    {total("cache_write_5m_tokens")} AS cache_creation_5m_input_tokens,
    {total("cache_write_1h_tokens")} AS cache_creation_1h_input_tokens,
    {total("cache_read_tokens")} AS cache_read_input_tokens,
    {_usd(total("input_cost"))} AS input_cost_usd,
    {_usd(total("output_cost"))} AS output_cost_usd,
    {_usd(total("cache_write_cost"))} AS cache_write_cost_usd,
    {_usd(total("cache_read_cost"))} AS cache_read_cost_usd,
    {_usd(total("total_cost"))} AS total_cost_usd,
    {_usd(total("uncached_cost") + " - " + total("total_cost"))} AS saved_cost_usd"""


def _views() -> dict[str, str]:
    rollup = _view_sums(lambda column: column)
    rows = _view_sums(lambda column: ROW_VALUES[column].format(r="usage_records"))
    return {
        "usage_by_model": (
            f"SELECT model, MIN(day) AS first_day, MAX(day) AS last_day, {rollup} FROM usage_daily GROUP BY model"
        ),
        "usage_by_day": f"SELECT day, model, {rollup} FROM usage_daily GROUP BY day, model",
        "usage_by_session": (
            "SELECT session_id, agent_id, MIN(created_at) AS first_request_at, MAX(created_at) AS last_request_at,"
            f" {rows} FROM usage_records GROUP BY session_id, agent_id"
        ),
    }


# Revision 0001's views, restored by downgrade.
_OLD_SUMS = """
    COUNT(*) AS request_count,
    SUM(input_tokens) AS input_tokens,
    SUM(output_tokens) AS output_tokens,
    SUM(cache_write_5m_tokens + cache_write_1h_tokens) AS cache_creation_input_tokens,
    SUM(cache_read_tokens) AS cache_read_input_tokens,
    SUM(CASE WHEN total_cost IS NULL THEN 1 ELSE 0 END) AS unpriced_requests,
    SUM(total_cost) / 1e9 AS total_cost_usd,
    SUM(uncached_cost - total_cost) / 1e9 AS saved_cost_usd"""


def _old_views() -> dict[str, str]:
    day = _day("created_at")
    return {
        "usage_by_model": f"SELECT model, {_OLD_SUMS} FROM usage_records GROUP BY model",
        "usage_by_day": f"SELECT {day} AS day, model, {_OLD_SUMS} FROM usage_records GROUP BY {day}, model",
        "usage_by_session": (
            f"SELECT session_id, agent_id, MIN(created_at) AS first_request_at, MAX(created_at) AS last_request_at,"
            f" {_OLD_SUMS} FROM usage_records GROUP BY session_id, agent_id"
        ),
    }


def _replace_views(views: dict[str, str]) -> None:
    for name in views:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for name, query in views.items():
        op.execute(f"CREATE VIEW {name} AS {query}")


def upgrade() -> None:
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("agent_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("request_count", sa.BigInteger(), nullable=False),
        sa.Column("unpriced_requests", sa.BigInteger(), nullable=False),
        sa.Column("input_tokens", sa.BigInteger(), nullable=False),
        sa.Column("output_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_5m_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_1h_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_tokens", sa.BigInteger(), nullable=False),
        sa.Column("input_cost", sa.BigInteger(), nullable=False),
        sa.Column("output_cost", sa.BigInteger(), nullable=False),
        sa.Column("cache_write_cost", sa.BigInteger(), nullable=False),
        sa.Column("cache_read_cost", sa.BigInteger(), nullable=False),
        sa.Column("total_cost", sa.BigInteger(), nullable=False),
        sa.Column("uncached_cost", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "agent_id", "model", name=op.f("pk_usage_daily")),
    )
    with op.batch_alter_table("usage_daily", schema=None) as batch_op:
        batch_op.create_index("ix_usage_daily_agent_day", ["agent_id", "day"], unique=False)

    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.add_column(sa.Column("upstream_message_id", sa.String(length=128), nullable=True))
        batch_op.create_index("ix_usage_records_upstream_message_id", ["upstream_message_id"], unique=True)

    _backfill()
    _create_triggers()
    _replace_views(_views())


def downgrade() -> None:
    _drop_triggers()
    for name in _views():
        op.execute(f"DROP VIEW IF EXISTS {name}")
    with op.batch_alter_table("usage_records", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_records_upstream_message_id")
        batch_op.drop_column("upstream_message_id")

    with op.batch_alter_table("usage_daily", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_daily_agent_day")

    op.drop_table("usage_daily")
    _replace_views(_old_views())
