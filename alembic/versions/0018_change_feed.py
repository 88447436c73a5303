"""the change feed: a position on each row a change writes (durable.backends.sql.feed)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02 18:05:00.000000
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POSITION = sa.BigInteger().with_variant(sa.Numeric(39, 0), "postgresql")
SEQUENCE = "durable_feed_seq"
XID_SHIFT = 18446744073709551616
COLUMNS = (
    ("durable_workflows", "created_seq"),
    ("durable_workflows", "started_seq"),
    ("durable_workflows", "finished_seq"),
    ("durable_steps", "change_seq"),
    ("durable_messages", "sent_seq"),
)
#: The columns an INSERT gives a position to by default (PostgreSQL, MariaDB).
INSERTED = {"durable_workflows": "created_seq", "durable_steps": "change_seq"}
INSERTED["durable_messages"] = "sent_seq"
#: SQLite: the tables whose rows may have their position in their rowid instead.
ROWIDS = {"durable_steps"}


def upgrade() -> None:
    name = op.get_bind().dialect.name
    op.create_table(
        "durable_feed_floor",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_durable_feed_floor")),
    )
    op.execute("INSERT INTO durable_feed_floor (id, position) VALUES (1, 0)")
    if name == "postgresql":
        op.execute(f"CREATE SEQUENCE {SEQUENCE}")
        # the writing transaction's id times 2**64 plus the sequence's next value (inlined)
        op.execute(
            "CREATE FUNCTION durable_feed_position() RETURNS numeric LANGUAGE sql VOLATILE AS "
            f"$$ SELECT pg_current_xact_id()::text::numeric * {XID_SHIFT} "
            f"+ nextval('{SEQUENCE}') $$"
        )
    elif name in ("mysql", "mariadb"):
        op.execute(f"CREATE SEQUENCE {SEQUENCE} CACHE 1000")
    for table, column in COLUMNS:
        # SQLite: rows without a position (most steps: theirs is their rowid) have no entry
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column(column, POSITION, nullable=True))
            batch_op.create_index(
                batch_op.f(f"ix_{table}_{column}"),
                [column],
                unique=False,
                sqlite_where=sa.text(f"{column} IS NOT NULL"),
            )
    for table, column in INSERTED.items():
        if name == "postgresql":
            op.execute(
                f"ALTER TABLE {table} ALTER COLUMN {column} SET DEFAULT durable_feed_position()"
            )
        elif name in ("mysql", "mariadb"):
            op.execute(
                f"ALTER TABLE {table} ALTER COLUMN {column} SET DEFAULT (NEXTVAL({SEQUENCE}))"
            )
    if name == "sqlite":
        for statement in _sqlite_triggers():
            op.execute(statement)


def _sqlite_triggers() -> list[str]:
    """SQLite (as durable.backends.sql.feed computes positions as of this revision): a
    workflow's or message's position left NULL by an insert is filled with one more than the
    highest (not a step's: durable's inserts of steps compute their own, some in the rowid);
    a deleted row's positions raise the floor, so that the highest never goes down."""

    def each(table: str, column: str) -> str:
        highest = f"SELECT max({column}) AS p FROM {table} WHERE {column} IS NOT NULL"
        if table in ROWIDS:
            highest += f" UNION ALL SELECT max(rowid) AS p FROM {table}"
        return highest

    highest = (
        "(SELECT coalesce(max(p), 0) + 1 FROM ("
        + " UNION ALL ".join(each(t, c) for t, c in COLUMNS)
        + " UNION ALL SELECT position AS p FROM durable_feed_floor))"
    )
    ddl = []
    for table, column in INSERTED.items():
        if table in ROWIDS:
            continue
        ddl.append(
            f"CREATE TRIGGER durable_feed_{column}_insert AFTER INSERT ON {table} "
            f"WHEN NEW.{column} IS NULL BEGIN UPDATE {table} SET {column} = {highest} "
            "WHERE rowid = NEW.rowid; END"
        )
    for table in INSERTED:
        olds = ", ".join(f"coalesce(OLD.{c}, 0)" for t, c in COLUMNS if t == table)
        if table in ROWIDS:
            olds += ", OLD.rowid"
        ddl.append(
            f"CREATE TRIGGER durable_feed_{table}_delete BEFORE DELETE ON {table} "
            f"BEGIN UPDATE durable_feed_floor SET position = max(position, {olds}, 0) "
            "WHERE id = 1; END"
        )
    return ddl


def downgrade() -> None:
    name = op.get_bind().dialect.name
    if name == "sqlite":
        for table, column in INSERTED.items():
            op.execute(f"DROP TRIGGER IF EXISTS durable_feed_{column}_insert")
            op.execute(f"DROP TRIGGER IF EXISTS durable_feed_{table}_delete")
    for table, column in reversed(COLUMNS):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_{column}"))
            batch_op.drop_column(column)
    if name == "postgresql":
        op.execute("DROP FUNCTION durable_feed_position()")
    if name in ("postgresql", "mysql", "mariadb"):
        op.execute(f"DROP SEQUENCE {SEQUENCE}")
    op.drop_table("durable_feed_floor")
