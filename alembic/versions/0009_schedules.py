"""cron schedules

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 08:26:10.019220
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

# MySQL / MariaDB: timestamps with microseconds, serialized values beyond TEXT's 64 KiB
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "durable_schedules",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("workflow", sa.String(length=255), nullable=False),
        sa.Column("cron", sa.String(length=255), nullable=False),
        sa.Column("timezone", sa.String(length=255), nullable=False),
        sa.Column("args", TEXT, nullable=False),
        sa.Column("kwargs", TEXT, nullable=False),
        sa.Column("missed", sa.String(length=16), nullable=False),
        sa.Column("max_catchup", sa.Integer(), nullable=False),
        sa.Column("queue", sa.String(length=255), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("next_run_at", TIMESTAMP, nullable=True),
        sa.Column("last_tick_at", TIMESTAMP, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_durable_schedules")),
    )
    with op.batch_alter_table("durable_schedules", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_durable_schedules_next_run_at"), ["next_run_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("durable_schedules", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_durable_schedules_next_run_at"))
    op.drop_table("durable_schedules")
