"""interrupted attempts counted apart; failed steps a redrive runs again

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 01:07:14.082807
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
    with op.batch_alter_table("durable_steps", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("rerun", sa.Boolean(), server_default=sa.false(), nullable=False)
        )

    with op.batch_alter_table("durable_workflows", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("interruptions", sa.Integer(), server_default=sa.text("0"), nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("durable_workflows", schema=None) as batch_op:
        batch_op.drop_column("interruptions")

    with op.batch_alter_table("durable_steps", schema=None) as batch_op:
        batch_op.drop_column("rerun")
