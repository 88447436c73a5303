"""a workflow keeps its partition key (a redrive or a fork runs in the same partition)

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02 15:40:00.000000
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("durable_workflows", schema=None) as batch_op:
        batch_op.add_column(sa.Column("partition_key", sa.String(length=255), nullable=True))
    # executions enqueued before this revision: their partition is on their task
    op.execute(
        "UPDATE durable_workflows SET partition_key = ("
        "SELECT t.partition_key FROM durable_tasks t "
        "WHERE t.instance_id = durable_workflows.id AND t.task_id = 'workflow') "
        "WHERE EXISTS (SELECT 1 FROM durable_tasks t WHERE t.instance_id = durable_workflows.id "
        "AND t.task_id = 'workflow' AND t.partition_key IS NOT NULL)"
    )


def downgrade() -> None:
    with op.batch_alter_table("durable_workflows", schema=None) as batch_op:
        batch_op.drop_column("partition_key")
