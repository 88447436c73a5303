"""workflows: the enqueuer's trace context (OpenTelemetry)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02 14:20:00.000000
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("durable_workflows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("trace_context", TEXT, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("durable_workflows", schema=None) as batch_op:
        batch_op.drop_column("trace_context")
