"""executor incarnations and heartbeat intervals

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 01:30:00.000000
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # rows of executors recorded before this revision get an empty incarnation (no process
    # runs under it any more once it is stopped or stale) and the default interval (10 s)
    with op.batch_alter_table('durable_executors', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('incarnation', sa.String(length=255), nullable=False, server_default='')
        )
        batch_op.add_column(
            sa.Column(
                'heartbeat_interval',
                # MySQL / MariaDB: FLOAT is single precision there
                sa.Float().with_variant(mysql.DOUBLE(), "mysql", "mariadb"),
                nullable=False,
                server_default='10',
            )
        )
    with op.batch_alter_table('durable_executors', schema=None) as batch_op:
        batch_op.alter_column('incarnation', server_default=None)
        batch_op.alter_column('heartbeat_interval', server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('durable_executors', schema=None) as batch_op:
        batch_op.drop_column('heartbeat_interval')
        batch_op.drop_column('incarnation')
