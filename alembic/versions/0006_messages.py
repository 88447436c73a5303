"""messages sent to workflows, and their timers by key

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 07:47:42.907597
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

# MySQL / MariaDB: timestamps with microseconds, serialized values beyond TEXT's 64 KiB
TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
TEXT = sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "durable_messages",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("workflow_id", sa.String(length=255), nullable=False),
        sa.Column("topic", sa.String(length=255), nullable=False),
        sa.Column("value", TEXT, nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("timer", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("sent_at", TIMESTAMP, nullable=False),
        sa.Column("deliver_at", TIMESTAMP, nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=True),
        sa.Column("received_position", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["durable_workflows.id"],
            name=op.f("fk_durable_messages_workflow_id_durable_workflows"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_durable_messages")),
        sa.UniqueConstraint(
            "workflow_id",
            "idempotency_key",
            name=op.f("uq_durable_messages_workflow_id_idempotency_key"),
        ),
    )
    with op.batch_alter_table("durable_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_durable_messages_workflow_id_topic_received_at_id"),
            ["workflow_id", "topic", "received_at", "id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("durable_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_durable_messages_workflow_id_topic_received_at_id"))
    op.drop_table("durable_messages")
