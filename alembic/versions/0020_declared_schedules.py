"""a schedule knows whether code declared it (a runtime deletes the ones its code dropped)

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 19:40:00.000000
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("durable_schedules", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("declared", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
    # schedules stored before this revision are taken as created from a client (kept): a
    # runtime that declares one marks it declared again when it starts


def downgrade() -> None:
    with op.batch_alter_table("durable_schedules", schema=None) as batch_op:
        batch_op.drop_column("declared")
