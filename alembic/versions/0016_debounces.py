"""debouncing: the execution of each (workflow name, debounce key)'s burst

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02 15:15:00.000000
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('durable_debounces',
    sa.Column('workflow', sa.String(length=255), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('workflow_id', sa.String(length=255), nullable=True),
    sa.Column('updated_at', TIMESTAMP, nullable=False),
    sa.ForeignKeyConstraint(['workflow_id'], ['durable_workflows.id'], name=op.f('fk_durable_debounces_workflow_id_durable_workflows'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('workflow', 'key', name=op.f('pk_durable_debounces'))
    )
    with op.batch_alter_table('durable_debounces', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_durable_debounces_workflow_id'), ['workflow_id'], unique=False)


def downgrade() -> None:
    # the table's indexes go with it (MySQL refuses to drop the index a foreign key uses)
    op.drop_table('durable_debounces')
