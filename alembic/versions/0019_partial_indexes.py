"""PostgreSQL: the workflow indexes of columns most rows leave NULL hold only the rows with a value

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03 14:30:00.000000
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "durable_workflows"
#: index columns -> the column whose value a row needs to be in the index
INDEXES = (
    (("parent_id",), "parent_id"),
    (("status", "deadline"), "deadline"),
    (("completed_at",), "completed_at"),
    (("started_seq",), "started_seq"),
    (("finished_seq",), "finished_seq"),
)


def _recreate(*, partial: bool) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # the others keep their indexes (SQLite's positions are partial since 0018)
    for columns, column in INDEXES:
        name = op.f(f"ix_{TABLE}_{'_'.join(columns)}")
        op.drop_index(name, table_name=TABLE)
        where = {"postgresql_where": sa.text(f"{column} IS NOT NULL")} if partial else {}
        op.create_index(name, TABLE, list(columns), unique=False, **where)


def upgrade() -> None:
    _recreate(partial=True)


def downgrade() -> None:
    _recreate(partial=False)
