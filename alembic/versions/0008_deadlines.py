"""workflow deadlines (cancelled once passed) and continue-as-new runs

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 07:42:11.428679
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

# MySQL / MariaDB: timestamps with microseconds, serialized values beyond TEXT's 64 KiB
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('durable_workflows', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deadline', TIMESTAMP, nullable=True))
        batch_op.add_column(
            sa.Column('continuations', sa.Integer(), server_default=sa.text('0'), nullable=False)
        )
        batch_op.create_index(
            batch_op.f('ix_durable_workflows_status_deadline'), ['status', 'deadline'], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table('durable_workflows', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_durable_workflows_status_deadline'))
        batch_op.drop_column('continuations')
        batch_op.drop_column('deadline')
