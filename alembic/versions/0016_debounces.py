"""debouncing: the execution of each (workflow name, debounce key)'s burst

Revision ID: 0016
Revises: 0014
Create Date: 2026-12-02 15:15:00.000000
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0016'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('durable_debounces',
    sa.Column('workflow', sa.String(length=255), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('workflow_id', sa.String(length=255), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['workflow_id'], ['durable_workflows.id'], name=op.f('fk_durable_debounces_workflow_id_durable_workflows'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('workflow', 'key', name=op.f('pk_durable_debounces'))
    )
    with op.batch_alter_table('durable_debounces', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_durable_debounces_workflow_id'), ['workflow_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('durable_debounces', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_durable_debounces_workflow_id'))

    op.drop_table('durable_debounces')
