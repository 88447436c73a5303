"""retention: an index on completed_at

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 09:15:00.000000
"""
from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("durable_workflows", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_durable_workflows_completed_at"), ["completed_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("durable_workflows", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_durable_workflows_completed_at"))
