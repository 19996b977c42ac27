"""estimated spend: a usage row marked `estimated` when some of its output tokens are the gateway's estimate; the
rollup and the views sum how much of a total is estimated; output-token calibration per model

A stream cut short (cancel, disconnect, shutdown, a crash) is billed by Anthropic for what it generated, but the
usage it reported stops at message_start's (usually 1 output token). Such rows now count the output tokens estimated
from the text and thinking actually generated, scaled per model by what Anthropic reported for complete replies
(`token_calibration.output_*`), and say so: `estimated`, `estimated_output_tokens` (of `output_tokens`, how many are
estimated) and `estimated_cost` (of `total_cost`, nano-USD priced from them). `usage_daily` sums the three
(`estimated_requests`, ...), so reports and views show the estimated share of every total.

The usage_daily triggers of 0002 are created again with the new sums (PostgreSQL: the same trigger function,
replaced). Columns are only added (plain ADD COLUMN, no table rebuild), as in 0005 and 0006.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEY = ("day", "agent_id", "model")
# As in 0002: usage_daily column -> its value for one usage_records row "{r}" (NEW or OLD).
OLD_ROW_VALUES = {
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
ROW_VALUES = {
    **OLD_ROW_VALUES,
    "estimated_requests": "CASE WHEN {r}.estimated THEN 1 ELSE 0 END",
    "estimated_output_tokens": "{r}.estimated_output_tokens",
    "estimated_cost": "CASE WHEN {r}.total_cost IS NULL THEN 0 ELSE {r}.estimated_cost END",
}
TRIGGERS = ("usage_daily_after_insert", "usage_daily_after_delete", "usage_daily_after_update")
NEW_DAILY = ("estimated_requests", "estimated_output_tokens", "estimated_cost")


def _sqlite() -> bool:
    return bool(op.get_bind().dialect.name == "sqlite")


def _day(column: str) -> str:
    return f"date({column})" if _sqlite() else f"CAST({column} AS DATE)"


def _add_row(r: str, values: dict[str, str]) -> str:
    columns = ", ".join((*KEY, *values))
    row = ", ".join((_day(f"{r}.created_at"), f"{r}.agent_id", f"{r}.model"))
    row += ", " + ", ".join(v.format(r=r) for v in values.values())
    table = "" if _sqlite() else "usage_daily."
    updates = ", ".join(f"{c} = {table}{c} + excluded.{c}" for c in values)
    return f"INSERT INTO usage_daily ({columns}) VALUES ({row}) ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET {updates}"


def _remove_row(r: str, values: dict[str, str]) -> list[str]:
    where = f"day = {_day(f'{r}.created_at')} AND agent_id = {r}.agent_id AND model = {r}.model"
    updates = ", ".join(f"{c} = {c} - ({v.format(r=r)})" for c, v in values.items())
    return [
        f"UPDATE usage_daily SET {updates} WHERE {where}",
        f"DELETE FROM usage_daily WHERE {where} AND request_count = 0",
    ]


def _drop_triggers() -> None:
    for name in TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + ("" if _sqlite() else " ON usage_records"))
    if not _sqlite():
        op.execute("DROP FUNCTION IF EXISTS usage_daily_sync()")


def _create_triggers(values: dict[str, str]) -> None:
    if _sqlite():
        body = {
            "usage_daily_after_insert": ("INSERT", [_add_row("NEW", values)]),
            "usage_daily_after_delete": ("DELETE", _remove_row("OLD", values)),
            "usage_daily_after_update": ("UPDATE", [*_remove_row("OLD", values), _add_row("NEW", values)]),
        }
        for name, (event, statements) in body.items():
            steps = "".join(f"  {s};\n" for s in statements)
            op.execute(f"CREATE TRIGGER {name} AFTER {event} ON usage_records FOR EACH ROW\nBEGIN\n{steps}END")
        return
    removal = "".join(f"    {s};\n" for s in _remove_row("OLD", values))
    op.execute(
        "CREATE FUNCTION usage_daily_sync() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n"
        f"  IF TG_OP IN ('DELETE', 'UPDATE') THEN\n{removal}  END IF;\n"
        f"  IF TG_OP IN ('INSERT', 'UPDATE') THEN\n    {_add_row('NEW', values)};\n  END IF;\n"
        "  RETURN NULL;\nEND\n$$"
    )
    for name, event in zip(TRIGGERS, ("INSERT", "DELETE", "UPDATE"), strict=True):
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON usage_records FOR EACH ROW EXECUTE FUNCTION usage_daily_sync()"
        )


def _usd(expr: str) -> str:
    return f"ROUND(({expr}) / 1e9, 9)"


def _view_sums(value: Callable[[str], str], estimated: bool) -> str:
    def total(column: str) -> str:
        return f"SUM({value(column)})"

    sums = f"""
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
    if estimated:
        sums += f""",
    {total("estimated_requests")} AS estimated_requests,
    {total("estimated_output_tokens")} AS estimated_output_tokens,
    {_usd(total("estimated_cost"))} AS estimated_cost_usd"""
    return sums


def _views(values: dict[str, str]) -> dict[str, str]:
    estimated = "estimated_cost" in values
    rollup = _view_sums(lambda column: column, estimated)
    rows = _view_sums(lambda column: values[column].format(r="usage_records"), estimated)
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


def _replace_views(views: dict[str, str]) -> None:
    for name in views:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    for name, query in views.items():
        op.execute(f"CREATE VIEW {name} AS {query}")


def upgrade() -> None:
    for name in _views(OLD_ROW_VALUES):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    _drop_triggers()
    op.add_column("usage_records", sa.Column("estimated", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.add_column(
        "usage_records", sa.Column("estimated_output_tokens", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.add_column("usage_records", sa.Column("estimated_cost", sa.BigInteger(), server_default="0", nullable=False))
    for column in NEW_DAILY:
        op.add_column("usage_daily", sa.Column(column, sa.BigInteger(), server_default="0", nullable=False))
    for column in ("output_samples", "output_estimated_tokens", "output_reported_tokens"):
        op.add_column("token_calibration", sa.Column(column, sa.BigInteger(), server_default="0", nullable=False))
    _create_triggers(ROW_VALUES)
    _replace_views(_views(ROW_VALUES))


def downgrade() -> None:
    for name in _views(ROW_VALUES):
        op.execute(f"DROP VIEW IF EXISTS {name}")
    _drop_triggers()
    with op.batch_alter_table("token_calibration") as batch:
        for column in ("output_samples", "output_estimated_tokens", "output_reported_tokens"):
            batch.drop_column(column)
    with op.batch_alter_table("usage_daily") as batch:
        for column in NEW_DAILY:
            batch.drop_column(column)
    with op.batch_alter_table("usage_records", recreate="never") as batch:
        for column in ("estimated_cost", "estimated_output_tokens", "estimated"):
            batch.drop_column(column)
    _create_triggers(OLD_ROW_VALUES)
    _replace_views(_views(OLD_ROW_VALUES))
